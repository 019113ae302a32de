#!/bin/sh
# systemd-nspawn mounts the cgroup v1 controllers read-only; containerd and kubelet must create cgroups.
set -e
awk '$3 == "cgroup" {print $2}' /proc/self/mounts | while read -r dir; do
    mount -o remount,bind,rw "$dir"
done
