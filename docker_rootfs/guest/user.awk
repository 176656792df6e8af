# Resolve a Docker USER spec (name, uid, uid:gid, name:group, ...) the way
# runc does, in the container's own passwd and group files.
# Input: -v spec=USER -v pw=PASSWD_FILE -v gr=GROUP_FILE
# Output: "UID GID SGIDS HOME" (SGIDS comma separated, "-" for none).
# Supplementary groups are the groups listing the user by name, unless a
# group is given explicitly (then none), as in runc.
function isnum(s) { return s ~ /^[0-9]+$/ }
BEGIN {
    u = spec; g = ""
    if (index(spec, ":")) { u = substr(spec, 1, index(spec, ":") - 1); g = substr(spec, index(spec, ":") + 1) }
    if (u == "") u = "0"
    found = 0
    while ((getline line < pw) > 0) {
        n = split(line, f, ":")
        if (n < 4) continue
        if ((isnum(u) && f[3] == u) || (!isnum(u) && f[1] == u)) {
            name = f[1]; uid = f[3]; gid = f[4]; home = f[6]; found = 1; break
        }
    }
    if (!found) {
        if (!isnum(u)) { print "unable to find user " u ": no matching entries in passwd file" > "/dev/stderr"; exit 1 }
        uid = u; gid = 0; home = "/"; name = ""
    }
    sg = ""
    if (g != "") {
        if (isnum(g)) gid = g
        else {
            gf = 0
            while ((getline line < gr) > 0) { split(line, f, ":"); if (f[1] == g) { gid = f[3]; gf = 1; break } }
            if (!gf) { print "unable to find group " g ": no matching entries in group file" > "/dev/stderr"; exit 1 }
        }
    } else if (name != "") {
        while ((getline line < gr) > 0) {
            split(line, f, ":"); m = split(f[4], mem, ",")
            for (i = 1; i <= m; i++) if (mem[i] == name) { sg = sg (sg == "" ? "" : ",") f[3]; break }
        }
    }
    if (sg == "") sg = "-"
    if (home == "") home = "/"
    print uid, gid, sg, home
}
