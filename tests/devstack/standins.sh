# shellcheck shell=bash
#
# STAND-INS for the devstack functions devstack/plugin.sh calls, for the
# tests in this directory only. They are NOT devstack's code: small
# re-implementations of the behaviour documented in devstack's
# inc/ini-config, inc/python and functions-common, enough to run the
# plugin's functions against copies of real config files. When a devstack
# checkout is available (see test_plugin.py: DEVSTACK_DIR), the tests run a
# second time with devstack's real inc/ini-config sourced after this file,
# replacing the ini stand-ins below.
#
# Calls that would install or download something are recorded, one line
# each, in $STANDIN_CALLS.

# --- ini stand-ins (devstack: inc/ini-config) -------------------------------

# standin iniget FILE SECTION OPTION: the value, words joined by single spaces
# (devstack echoes it unquoted).
function iniget {
    local line
    line=$(sed -n -e "/^\[$2\]/,/^\[.*\]/ { /^$3[ \t]*=/ p; }" "$1")
    # shellcheck disable=SC2086
    echo ${line#*=}
}

function ini_has_option {
    local line
    line=$(sed -n -e "/^\[$2\]/,/^\[.*\]/ { /^$3[ \t]*=/ p; }" "$1")
    [ -n "$line" ]
}

# standin iniset FILE SECTION OPTION VALUE: replace the option in place, or
# add "OPTION = VALUE" right after the section header (the section is
# appended when missing). Like devstack, VALUE goes through an unquoted
# echo (word splitting and pathname expansion).
function iniset {
    local file=$1 section=$2 option=$3 value=$4
    # shellcheck disable=SC2086
    value=$(echo $value | sed -e 's/\\/\\\\/g' -e 's/&/\\&/g' -e 's/|/\\|/g')
    if ! grep -q "^\[$section\]" "$file" 2>/dev/null; then
        printf '\n[%s]\n' "$section" >>"$file"
    fi
    if ini_has_option "$file" "$section" "$option"; then
        sed -i -e "/^\[$section\]/,/^\[.*\]/ s|^\(${option}[ \t]*=[ \t]*\).*$|\1${value}|" "$file"
    else
        sed -i -e "/^\[$section\]/ a\\
$option = $value
" "$file"
    fi
}

function inidelete {
    sed -i -e "/^\[$2\]/,/^\[.*\]/ { /^$3[ \t]*=/ d; }" "$1"
}

# --- functions-common / inc/python stand-ins --------------------------------

function trueorfalse {
    local value=${!2:-}
    case "$value" in
        1 | [yY]es | YES | [tT]rue | TRUE) echo True ;;
        0 | [nN]o | NO | [fF]alse | FALSE) echo False ;;
        *) echo "$1" ;;
    esac
}

function is_service_enabled {
    local service
    for service in "$@"; do
        [[ ",${ENABLED_SERVICES}," == *",$service,"* ]] && return 0
    done
    return 1
}

# devstack refuses to enable a service of DISABLED_SERVICES (disable_service
# in local.conf).
function enable_service {
    [[ ",${DISABLED_SERVICES:-}," == *",$1,"* ]] && return 0
    [[ ",${ENABLED_SERVICES}," == *",$1,"* ]] || ENABLED_SERVICES="${ENABLED_SERVICES:+$ENABLED_SERVICES,}$1"
}

function define_plugin { :; }
function echo_summary { echo "summary: $*"; }
function warn { echo "warn: $*" >&2; }
function die { echo "die: $*" >&2; exit 1; }

function join_extras {
    local IFS=","
    echo "$*"
}

function get_python_exec_prefix { echo "${STANDIN_PYTHON_PREFIX:-/usr/local/bin}"; }

function _standin_record {
    echo "$*" >>"$STANDIN_CALLS"
}

function setup_install { _standin_record "setup_install PIP_VIRTUAL_ENV=${PIP_VIRTUAL_ENV:-} $*"; }
function setup_develop { _standin_record "setup_develop PIP_VIRTUAL_ENV=${PIP_VIRTUAL_ENV:-} $*"; }
function pip_uninstall { _standin_record "pip_uninstall PIP_VIRTUAL_ENV=${PIP_VIRTUAL_ENV:-} $*"; }
function install_bindep { _standin_record "install_bindep $*"; }
function install_package { _standin_record "install_package $*"; }

# The tests run unprivileged paths as the current user.
function sudo { "$@"; }
