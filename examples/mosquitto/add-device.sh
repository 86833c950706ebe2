#!/bin/sh
# Add (or re-key) a device: its password in the password file and its fleet block in the ACL.
# usage: add-device.sh PASSWORD_FILE ACL_FILE DEVICE_ID FLEET [PASSWORD]
# Without PASSWORD one is generated and printed (put it in the device's password_file).
# Then reload Mosquitto: systemctl reload mosquitto (or send it SIGHUP).
set -eu
if [ $# -lt 4 ]; then
  echo "usage: $0 PASSWORD_FILE ACL_FILE DEVICE_ID FLEET [PASSWORD]" >&2; exit 2
fi
pwfile=$1; acl=$2; dev=$3; fleet=$4; pw=${5:-}
case "$dev$fleet" in *[!A-Za-z0-9._-]*) echo "$0: device id and fleet: letters, digits, . _ - only" >&2; exit 2;; esac
if [ -z "$pw" ]; then pw=$(head -c 18 /dev/urandom | base64 | tr -d '/+='); echo "password for $dev: $pw"; fi
if [ -f "$pwfile" ]; then mosquitto_passwd -b "$pwfile" "$dev" "$pw"; else mosquitto_passwd -b -c "$pwfile" "$dev" "$pw"; fi
if ! grep -qx "user $dev" "$acl" 2>/dev/null; then
  printf '\nuser %s\ntopic read infantino/fleet/%s/head\ntopic read infantino/fleet/%s/head/delta\n' \
    "$dev" "$fleet" "$fleet" >> "$acl"
  printf 'topic read infantino/fleet/%s/rollout\ntopic read infantino/fleet/%s/ring/+/head\n' \
    "$fleet" "$fleet" >> "$acl"
  printf 'topic read infantino/fleet/%s/ring/+/head/delta\n' "$fleet" >> "$acl"
fi
