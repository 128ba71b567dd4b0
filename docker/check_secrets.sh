#!/bin/sh
# Refuses placeholder secrets before the stack starts (docker-compose.yml's secrets-check
# one-shot; every service that uses a secret waits for it to succeed).
#
#   check_secrets.sh [-e EXAMPLE_FILE] NAME...
#
# Each NAME is an environment variable holding a secret. It is refused when it is unset or
# empty, holds "change-me", equals any value in EXAMPLE_FILE (.env.example), is shorter than 12
# characters, or has characters other than letters, digits, '-' and '_' (the secrets go into
# URLs and a JSON file unescaped). Every refusal is reported, never the value; exit 1 if any.
# POSIX sh only: runs in any image.

set -u
MIN_LENGTH=12
example=""
if [ "${1-}" = "-e" ]; then
    [ "$#" -ge 2 ] || { echo "secrets-check: -e needs a file" >&2; exit 2; }
    example=$2
    shift 2
fi
if [ "$#" -eq 0 ]; then
    echo "usage: check_secrets.sh [-e EXAMPLE_FILE] NAME..." >&2
    exit 2
fi

# Is $1 one of the values in the example file (KEY=VALUE lines, comments skipped)?
in_example() {
    [ -n "$example" ] && [ -f "$example" ] || return 1
    while IFS= read -r line || [ -n "$line" ]; do
        case $line in
            '#'*|'') continue ;;
            *=*) [ "${line#*=}" = "$1" ] && return 0 ;;
        esac
    done < "$example"
    return 1
}

failed=0
refuse() {
    echo "secrets-check: $1 $2; set it in .env (e.g. openssl rand -hex 24)" >&2
    failed=1
}

for name in "$@"; do
    case $name in
        ''|[0-9]*|*[!A-Za-z0-9_]*) echo "secrets-check: bad variable name '$name'" >&2; exit 2 ;;
    esac
    eval "set_=\${$name+x} value=\${$name-}"
    lower=$(printf '%s' "$value" | tr '[:upper:]' '[:lower:]')
    if [ -z "$set_" ] || [ -z "$value" ]; then
        refuse "$name" "is not set"
    else
        case $lower in
            *change-me*|*changeme*|*change_me*) refuse "$name" "is still the placeholder from .env.example"; continue ;;
        esac
        if in_example "$value"; then
            refuse "$name" "is a value from .env.example"
        elif [ "${#value}" -lt "$MIN_LENGTH" ]; then
            refuse "$name" "has ${#value} characters, fewer than $MIN_LENGTH"
        else
            case $value in
                *[!A-Za-z0-9_-]*) refuse "$name" "has characters other than letters, digits, '-' and '_'" ;;
            esac
        fi
    fi
done
[ "$failed" -eq 0 ] || exit 1
echo "secrets-check: $# secrets set"
