#!/bin/bash
# shellcheck shell=bash
#
# devstack/plugin.sh: docker2vm DevStack plugin (one container per VM).
#
#   [[local|localrc]]
#   enable_plugin docker2vm https://example.org/docker2vm [GITREF]
#
# stack.sh sources this file as ``plugin.sh <mode> [phase]``:
#
# stack pre-install  system packages of bindep.txt's "run" profile
# stack install      pip install docker2vm[glance] / [nova] into the Glance
#                    and Nova environments (not editable: the nova.virt shim
#                    of the compute driver must be a real file); compute hosts
#                    build the base VM with `docker2vm base-image`
# stack post-config  Glance: glance-image-import.conf (image_import_plugins,
#                    [docker_convert]), the docker-convert paste filter in
#                    glance-api-paste.ini, glance-direct in
#                    enabled_import_methods and docker in container_formats
#                    if an explicit list lacks them, metadefs loaded.
#                    Nova: compute_driver and [docker2vm] in nova.conf, which
#                    start_nova_compute (lib/nova) copies into nova-cpu.conf
#                    after this phase (and in nova-cpu.conf if it exists)
# unstack            undo the configuration edits (what post-config added,
#                    recorded in $DOCKER2VM_STATE_DIR)
# clean              unstack's undo, then remove the base VM, the share trees
#                    and conversion leftovers, and uninstall docker2vm
#
# Every devstack function called here is read from devstack's source:
# iniset/iniget/inidelete (inc/ini-config), setup_install/pip_uninstall/
# join_extras (inc/python), install_bindep/is_service_enabled/echo_summary/
# warn (functions-common). Settings: devstack/settings.

_XTRACE_DOCKER2VM=$(set +o | grep xtrace)
set +o xtrace

DOCKER2VM_PASTE_FILTER=docker-convert
DOCKER2VM_IMPORT_PLUGIN=docker_convert
DOCKER2VM_METADEFS=(docker2vm-container.json)

# --- small helpers ----------------------------------------------------------

function docker2vm_glance_enabled {
    [[ "$DOCKER2VM_ENABLE_GLANCE" == "True" ]] && is_service_enabled g-api
}

function docker2vm_nova_enabled {
    [[ "$DOCKER2VM_ENABLE_NOVA" == "True" ]] && is_service_enabled n-cpu
}

# _docker2vm_list_has LIST ITEM: LIST is an oslo.config list value
# ("a,b", "[a, b]", "['a', 'b']").
function _docker2vm_list_has {
    local list=$1 item=$2 x
    list=${list//[][ \"\']/}
    local IFS=,
    for x in $list; do
        [[ "$x" == "$item" ]] && return 0
    done
    return 1
}

# _docker2vm_list_edit LIST add|remove ITEM [first]: the list with ITEM added
# (at the end, or first) or removed, written "[a, b]" (oslo.config ListOpt
# with bounds accepts brackets and quotes).
function _docker2vm_list_edit {
    local list=$1 op=$2 item=$3 where=${4:-last} x
    local -a out=()
    list=${list//[][ \"\']/}
    if [[ "$op" == "add" && "$where" == "first" ]]; then
        out+=("$item")
    fi
    local IFS=,
    for x in $list; do
        [[ -n "$x" && "$x" != "$item" ]] && out+=("$x")
    done
    if [[ "$op" == "add" && "$where" != "first" ]]; then
        out+=("$item")
    fi
    local joined=${out[*]}
    echo "[${joined//,/, }]"
}

# _docker2vm_iniset_list FILE SECTION OPTION "[a, b]": iniset without
# pathname expansion (iniset runs `echo $value` unquoted: "[docker_convert]"
# is a glob matching one-character file names in the current directory).
function _docker2vm_iniset_list {
    local -
    set -f
    iniset "$@"
}

# _docker2vm_iniget_list FILE SECTION OPTION: iniget without pathname
# expansion (iniget echoes the value unquoted too).
function _docker2vm_iniget_list {
    local -
    set -f
    iniget "$@"
}

# _docker2vm_remove_section FILE SECTION: the section and its options.
function _docker2vm_remove_section {
    local file=$1 section=$2
    [[ -f "$file" ]] || return 0
    sed -i -e "/^\[$section\]/,/^\[/ { /^\[$section\]/d; /^\[/!d; }" "$file"
}

# _docker2vm_paste_pipelines FILE: names of the [composite:api] pipelines
# (the paste_deploy flavors) that end in rootapp.
function _docker2vm_paste_pipelines {
    sed -n -e '/^\[composite:api\]/,/^\[/ s/^\([A-Za-z0-9_.+-]*\)[ \t]*=.*[ \t]rootapp[ \t]*$/\1/p' "$1"
}

function _docker2vm_mark {
    mkdir -p "$DOCKER2VM_STATE_DIR"
    touch "$DOCKER2VM_STATE_DIR/$1"
}

function _docker2vm_marked {
    [[ -f "$DOCKER2VM_STATE_DIR/$1" ]]
}

# Where `docker2vm` is installed for the Nova side (else the Glance side).
function _docker2vm_bin_dir {
    if docker2vm_nova_enabled && [[ -n "${NOVA_BIN_DIR:-}" ]]; then
        echo "$NOVA_BIN_DIR"
    elif [[ -n "${GLANCE_BIN_DIR:-}" ]]; then
        echo "$GLANCE_BIN_DIR"
    else
        get_python_exec_prefix
    fi
}

# --- install ---------------------------------------------------------------

function install_docker2vm_packages {
    if [[ "$DOCKER2VM_INSTALL_BINDEP" == "True" ]]; then
        install_bindep "$DOCKER2VM_DIR/bindep.txt" run
    fi
}

# The extras of setup.cfg: docker2vm[glance] next to glance-api,
# docker2vm[nova] next to nova-compute (one venv, or each project's own with
# USE_VENV=True).
function install_docker2vm {
    local -a extras=()
    docker2vm_glance_enabled && extras+=(glance)
    docker2vm_nova_enabled && extras+=(nova)
    if [[ "${USE_VENV:-False}" == "True" ]]; then
        local extra
        for extra in "${extras[@]}"; do
            PIP_VIRTUAL_ENV=${PROJECT_VENV[$extra]:-} setup_install "$DOCKER2VM_DIR" "$extra"
        done
    else
        setup_install "$DOCKER2VM_DIR" "$(join_extras "${extras[@]}")"
    fi
}

# The base VM every container boots (compute hosts).
function build_docker2vm_base {
    local -a args=(-o "$DOCKER2VM_BASE_DIR" --cache-dir "$DOCKER2VM_CACHE_DIR")
    if [[ "$DOCKER2VM_BOOT_DISK" == "True" ]]; then
        args+=(--boot-disk)
    fi
    if [[ -n "$DOCKER2VM_KERNEL_PACKAGE" ]]; then
        args+=(--kernel-package "$DOCKER2VM_KERNEL_PACKAGE")
    fi
    sudo install -d -o "$STACK_USER" "$DOCKER2VM_BASE_DIR" "$DOCKER2VM_CACHE_DIR"
    "$(_docker2vm_bin_dir)/docker2vm" base-image "${args[@]}"
}

# --- Glance ----------------------------------------------------------------

function configure_docker2vm_glance {
    local value

    # glance-image-import.conf: the plugin first (it produces the image the
    # others work on), then its options.
    value=$(_docker2vm_iniget_list "$GLANCE_IMAGE_IMPORT_CONF" image_import_opts image_import_plugins)
    if ! _docker2vm_list_has "$value" "$DOCKER2VM_IMPORT_PLUGIN"; then
        _docker2vm_iniset_list "$GLANCE_IMAGE_IMPORT_CONF" image_import_opts image_import_plugins \
            "$(_docker2vm_list_edit "$value" add "$DOCKER2VM_IMPORT_PLUGIN" first)"
    fi
    iniset "$GLANCE_IMAGE_IMPORT_CONF" docker_convert default_delivery "$DOCKER2VM_DEFAULT_DELIVERY"
    # docker_delivery=bundle boots the same base VM: the one the install
    # phase built for Nova on this host, else Glance builds it on first use.
    sudo install -d -o "$STACK_USER" "$DOCKER2VM_BASE_DIR"
    iniset "$GLANCE_IMAGE_IMPORT_CONF" docker_convert bundle_base_dir "$DOCKER2VM_BASE_DIR"
    if [[ -n "$DOCKER2VM_TEMP_DIR" ]]; then
        sudo install -d -o "$STACK_USER" "$DOCKER2VM_TEMP_DIR"
        iniset "$GLANCE_IMAGE_IMPORT_CONF" docker_convert temp_dir "$DOCKER2VM_TEMP_DIR"
    fi

    # glance-api-paste.ini: the filter, just before rootapp in every flavor.
    iniset "$GLANCE_API_PASTE_INI" "filter:$DOCKER2VM_PASTE_FILTER" paste.filter_factory \
        glance_docker_import.paste_filter:filter_factory
    local pipeline
    for pipeline in $(_docker2vm_paste_pipelines "$GLANCE_API_PASTE_INI"); do
        value=$(iniget "$GLANCE_API_PASTE_INI" composite:api "$pipeline")
        if [[ " $value " != *" $DOCKER2VM_PASTE_FILTER "* ]]; then
            iniset "$GLANCE_API_PASTE_INI" composite:api "$pipeline" \
                "${value% rootapp} $DOCKER2VM_PASTE_FILTER rootapp"
        fi
    done

    # docker-convert rides on glance-direct (and web-download): keep it in
    # an explicit enabled_import_methods (the default list has it).
    value=$(_docker2vm_iniget_list "$GLANCE_API_CONF" DEFAULT enabled_import_methods)
    if [[ -n "$value" ]] && ! _docker2vm_list_has "$value" glance-direct; then
        _docker2vm_iniset_list "$GLANCE_API_CONF" DEFAULT enabled_import_methods \
            "$(_docker2vm_list_edit "$value" add glance-direct)"
        _docker2vm_mark glance-direct-added
    fi

    # container_format=docker: in Glance's default list; add it to an
    # explicit one ([image_format], or the deprecated [DEFAULT] name).
    local section
    for section in image_format DEFAULT; do
        value=$(iniget "$GLANCE_API_CONF" "$section" container_formats)
        if [[ -n "$value" ]] && ! _docker2vm_list_has "$value" docker; then
            iniset "$GLANCE_API_CONF" "$section" container_formats "${value},docker"
            _docker2vm_mark "container-format-docker-added.$section"
        fi
    done

    # Metadata definitions (Horizon): copied next to Glance's own, and loaded
    # on the database host (init_glance loaded the stock ones before this
    # phase).
    if [[ -n "${GLANCE_METADEF_DIR:-}" && -d "$GLANCE_METADEF_DIR" ]]; then
        local f
        for f in "${DOCKER2VM_METADEFS[@]}"; do
            cp -p "$DOCKER2VM_DIR/etc/metadefs/$f" "$GLANCE_METADEF_DIR/"
        done
    fi
    # shellcheck disable=SC2086
    if [[ "$DOCKER2VM_LOAD_METADEFS" == "True" ]] && is_service_enabled $DATABASE_BACKENDS; then
        "$GLANCE_BIN_DIR/glance-manage" --config-file "$GLANCE_API_CONF" \
            db_load_metadefs "$DOCKER2VM_DIR/etc/metadefs"
    fi
}

function unconfigure_docker2vm_glance {
    local value pipeline section f

    if [[ -f "$GLANCE_IMAGE_IMPORT_CONF" ]]; then
        value=$(_docker2vm_iniget_list "$GLANCE_IMAGE_IMPORT_CONF" image_import_opts image_import_plugins)
        if _docker2vm_list_has "$value" "$DOCKER2VM_IMPORT_PLUGIN"; then
            _docker2vm_iniset_list "$GLANCE_IMAGE_IMPORT_CONF" image_import_opts image_import_plugins \
                "$(_docker2vm_list_edit "$value" remove "$DOCKER2VM_IMPORT_PLUGIN")"
        fi
        _docker2vm_remove_section "$GLANCE_IMAGE_IMPORT_CONF" docker_convert
    fi

    if [[ -f "$GLANCE_API_PASTE_INI" ]]; then
        for pipeline in $(_docker2vm_paste_pipelines "$GLANCE_API_PASTE_INI"); do
            value=$(iniget "$GLANCE_API_PASTE_INI" composite:api "$pipeline")
            if [[ " $value " == *" $DOCKER2VM_PASTE_FILTER "* ]]; then
                value=" $value "
                value=${value// $DOCKER2VM_PASTE_FILTER / }
                value=${value# }
                iniset "$GLANCE_API_PASTE_INI" composite:api "$pipeline" "${value% }"
            fi
        done
        _docker2vm_remove_section "$GLANCE_API_PASTE_INI" "filter:$DOCKER2VM_PASTE_FILTER"
    fi

    if [[ -f "$GLANCE_API_CONF" ]]; then
        if _docker2vm_marked glance-direct-added; then
            value=$(_docker2vm_iniget_list "$GLANCE_API_CONF" DEFAULT enabled_import_methods)
            _docker2vm_iniset_list "$GLANCE_API_CONF" DEFAULT enabled_import_methods \
                "$(_docker2vm_list_edit "$value" remove glance-direct)"
        fi
        for section in image_format DEFAULT; do
            if _docker2vm_marked "container-format-docker-added.$section"; then
                value=$(iniget "$GLANCE_API_CONF" "$section" container_formats)
                value=$(_docker2vm_list_edit "$value" remove docker)
                value=${value#[}
                value=${value%]}
                iniset "$GLANCE_API_CONF" "$section" container_formats "${value//, /,}"
            fi
        done
    fi
    rm -f "$DOCKER2VM_STATE_DIR/glance-direct-added" \
        "$DOCKER2VM_STATE_DIR"/container-format-docker-added.*

    if [[ -n "${GLANCE_METADEF_DIR:-}" ]]; then
        for f in "${DOCKER2VM_METADEFS[@]}"; do
            rm -f "${GLANCE_METADEF_DIR:?}/$f"
        done
    fi
}

# --- Nova ------------------------------------------------------------------

# nova-cpu.conf does not exist yet at post-config: start_nova_compute
# (lib/nova) makes it from a copy of $NOVA_CONF (then local.conf's
# [[post-config|$NOVA_CPU_CONF]]), so the options go into $NOVA_CONF, and
# into $NOVA_CPU_CONF when a previous run left one.
function configure_docker2vm_nova {
    local conf cmdline=""
    if [[ -r "$DOCKER2VM_BASE_DIR/cmdline" ]]; then
        cmdline=$(<"$DOCKER2VM_BASE_DIR/cmdline")
    fi
    for conf in "$NOVA_CONF" "$NOVA_CPU_CONF"; do
        [[ "$conf" == "$NOVA_CONF" || -f "$conf" ]] || continue
        iniset "$conf" DEFAULT compute_driver "$DOCKER2VM_COMPUTE_DRIVER"
        if [[ "$DOCKER2VM_BOOT_DISK" == "True" ]]; then
            iniset "$conf" docker2vm base_vm_image "$DOCKER2VM_BASE_DIR/boot.qcow2"
        else
            iniset "$conf" docker2vm base_kernel "$DOCKER2VM_BASE_DIR/vmlinux"
            iniset "$conf" docker2vm base_initrd "$DOCKER2VM_BASE_DIR/initrd.img"
            if [[ -n "$cmdline" ]]; then
                iniset "$conf" docker2vm base_cmdline "$cmdline"
            fi
        fi
        # bundle images boot as plain images: Nova's choices are disk|share.
        if [[ "$DOCKER2VM_DEFAULT_DELIVERY" == "disk" || "$DOCKER2VM_DEFAULT_DELIVERY" == "share" ]]; then
            iniset "$conf" docker2vm default_delivery "$DOCKER2VM_DEFAULT_DELIVERY"
        fi
        iniset "$conf" docker2vm share_driver "$DOCKER2VM_SHARE_DRIVER"
    done
}

function unconfigure_docker2vm_nova {
    local conf
    for conf in "$NOVA_CONF" "$NOVA_CPU_CONF"; do
        [[ -f "$conf" ]] || continue
        if [[ "$(iniget "$conf" DEFAULT compute_driver)" == "$DOCKER2VM_COMPUTE_DRIVER" ]]; then
            iniset "$conf" DEFAULT compute_driver "$DOCKER2VM_STOCK_COMPUTE_DRIVER"
        fi
        _docker2vm_remove_section "$conf" docker2vm
    done
}

# --- clean -----------------------------------------------------------------

function cleanup_docker2vm {
    sudo rm -rf "${DOCKER2VM_BASE_DIR:?}" "${DOCKER2VM_CACHE_DIR:?}" "${DOCKER2VM_STATE_DIR:?}"
    if [[ -n "${NOVA_INSTANCES_PATH:-}" ]]; then
        sudo rm -rf "${NOVA_INSTANCES_PATH:?}/_docker2vm_shares"
    fi
    # Conversion temporaries (<image_id>.docker2vm-<task>.<what>) of a
    # glance-api killed mid-import.
    local dir
    for dir in "${GLANCE_STAGING_DIR:-}" "$DOCKER2VM_TEMP_DIR"; do
        if [[ -n "$dir" && -d "$dir" ]]; then
            sudo find "$dir" -maxdepth 1 -name '*.docker2vm-*' -exec rm -rf {} +
        fi
    done
    # pip_uninstall (inc/python) knows PIP_VIRTUAL_ENV and the system
    # Python, not devstack's global venv: name the venv.
    if [[ "${USE_VENV:-False}" == "True" ]]; then
        local project
        for project in glance nova; do
            PIP_VIRTUAL_ENV=${PROJECT_VENV[$project]:-} pip_uninstall docker2vm
        done
    elif [[ "${GLOBAL_VENV:-False}" == "True" ]]; then
        PIP_VIRTUAL_ENV=$DEVSTACK_VENV pip_uninstall docker2vm
    else
        pip_uninstall docker2vm
    fi
}

# --- dispatch --------------------------------------------------------------

if is_service_enabled docker2vm; then
    if [[ "$1" == "stack" && "$2" == "pre-install" ]]; then
        echo_summary "docker2vm: system packages"
        install_docker2vm_packages

    elif [[ "$1" == "stack" && "$2" == "install" ]]; then
        echo_summary "docker2vm: installing into the Glance/Nova environments"
        install_docker2vm
        if docker2vm_nova_enabled; then
            echo_summary "docker2vm: building the base VM in $DOCKER2VM_BASE_DIR"
            build_docker2vm_base
        fi

    elif [[ "$1" == "stack" && "$2" == "post-config" ]]; then
        if docker2vm_glance_enabled; then
            echo_summary "docker2vm: configuring Glance (docker-convert import)"
            configure_docker2vm_glance
        fi
        if docker2vm_nova_enabled; then
            echo_summary "docker2vm: configuring Nova (compute_driver $DOCKER2VM_COMPUTE_DRIVER)"
            configure_docker2vm_nova
        fi

    elif [[ "$1" == "stack" && "$2" == "extra" ]]; then
        :

    elif [[ "$1" == "stack" && "$2" == "test-config" ]]; then
        :
    fi

    if [[ "$1" == "unstack" ]]; then
        unconfigure_docker2vm_glance
        unconfigure_docker2vm_nova
    fi

    if [[ "$1" == "clean" ]]; then
        unconfigure_docker2vm_glance
        unconfigure_docker2vm_nova
        cleanup_docker2vm
    fi
fi

$_XTRACE_DOCKER2VM
