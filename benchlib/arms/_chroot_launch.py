"""Run one command chrooted into an exported image, with no isolation (the ``rootfs`` arm).

    python _chroot_launch.py PLAN_JSON

PLAN_JSON (built by :meth:`benchlib.arms.chroot.ChrootLauncher.argv`): ``rootfs``, ``binds`` (source, target,
recursive, readonly; in order), ``driver`` (``dir`` inside the rootfs, ``libs``: name -> host file,
``bins``: name -> host file), ``env``, ``cwd``, ``argv``, ``ulimits`` (name -> [soft, hard], -1
unlimited) and ``cpuset`` (a CPU list or null).

Steps: a private mount namespace of its own (as root; otherwise a user namespace mapping only the
invoker's UID and GID, so that the command runs as the invoker with no capabilities); the rootfs
bound onto itself (so that it is the / of /proc/self/mountinfo inside); the binds,
each target resolved inside the rootfs (symlinks in the image are followed within it, never out to
the host) and created when missing; a tmpfs on the driver folder with the host's driver files bound
in (``lib64``, with the soname links, and ``bin``); chroot; rlimits and CPU affinity; exec. The mounts
exist only in this process's namespace and vanish when it exits. Standard library only.
"""
from __future__ import annotations

import ctypes
import json
import os
import resource
import sys

CLONE_NEWNS, CLONE_NEWUSER = 0x00020000, 0x10000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
_ST_TO_MS = {1: MS_RDONLY, 2: MS_NOSUID, 4: MS_NODEV, 8: MS_NOEXEC, 1024: MS_NOATIME, 2048: MS_NODIRATIME,
             4096: MS_RELATIME}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]


class LaunchError(Exception):
    pass


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise LaunchError(f"{what}: {os.strerror(errno)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(_libc.mount(source.encode() if source else None, target.encode(), fstype.encode() if fstype else None,
                       flags, data.encode() if data else None),
           f"mount {source or fstype} on {target}")


def _enter_namespace() -> None:
    uid, gid = os.getuid(), os.getgid()
    if os.geteuid() == 0:
        _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    else:
        _check(_libc.unshare(CLONE_NEWUSER | CLONE_NEWNS), "unshare(CLONE_NEWUSER|CLONE_NEWNS) (user namespaces off?)")
        with open("/proc/self/setgroups", "w") as handle:
            handle.write("deny")
        with open("/proc/self/uid_map", "w") as handle:
            handle.write(f"{uid} {uid} 1")
        with open("/proc/self/gid_map", "w") as handle:
            handle.write(f"{gid} {gid} 1")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)


def resolve_in_root(root: str, path: str, hops: int = 40) -> str:
    """``path`` inside ``root`` with the image's symlinks followed within ``root`` (never out of it)."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    done: list[str] = []
    while parts:
        part = parts.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        candidate = os.path.join(root, *done, part)
        if os.path.islink(candidate):
            hops -= 1
            if hops < 0:
                raise LaunchError(f"too many symlinks resolving {path} in {root}")
            link = os.readlink(candidate)
            if link.startswith("/"):
                done = []
            parts = [p for p in link.split("/") if p not in ("", ".")] + parts
            continue
        done.append(part)
    return os.path.join(root, *done)


def _ensure(target: str, is_file: bool) -> None:
    if os.path.lexists(target):
        return
    if is_file:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "a"):
            pass
    else:
        os.makedirs(target, exist_ok=True)


def _bind(source: str, target: str, recursive: bool, readonly: bool) -> None:
    _mount(source, target, None, MS_BIND | (MS_REC if recursive else 0))
    if readonly:  # keep the flags the source mount has (a user namespace may not drop locked ones)
        kept = 0
        for st_flag, ms_flag in _ST_TO_MS.items():
            if os.statvfs(target).f_flag & st_flag:
                kept |= ms_flag
        _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | kept)


def _driver(root: str, driver: dict) -> None:
    libs, bins = driver.get("libs") or {}, driver.get("bins") or {}
    if not libs and not bins:
        return
    top = resolve_in_root(root, driver["dir"])
    os.makedirs(top, exist_ok=True)
    _mount("tmpfs", top, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755,size=1m")
    for sub, files, executable in (("lib64", libs, False), ("bin", bins, True)):
        folder = os.path.join(top, sub)
        os.makedirs(folder, exist_ok=True)
        bound: set[str] = set()
        for name, real in sorted(files.items()):
            base = os.path.basename(real)
            if base not in bound:
                target = os.path.join(folder, base)
                _ensure(target, True)
                _bind(real, target, False, True)
                bound.add(base)
            link = os.path.join(folder, name)
            if name != base and not os.path.lexists(link):
                os.symlink(base, link)
    _mount(None, top, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _limits(plan: dict) -> None:
    for name, (soft, hard) in (plan.get("ulimits") or {}).items():
        which = getattr(resource, f"RLIMIT_{name.upper()}")
        resource.setrlimit(which, (resource.RLIM_INFINITY if soft < 0 else soft,
                                   resource.RLIM_INFINITY if hard < 0 else hard))
    if plan.get("cpuset"):
        os.sched_setaffinity(0, set(plan["cpuset"]))


def main(plan_json: str) -> int:
    plan = json.loads(plan_json)
    root = os.path.realpath(plan["rootfs"])
    try:
        _enter_namespace()
        _mount(root, root, None, MS_BIND | MS_REC)  # the rootfs as a mount of its own: / in mountinfo
        for bind in plan["binds"]:
            source = bind["source"]
            if not os.path.exists(source):
                continue
            target = resolve_in_root(root, bind["target"])
            _ensure(target, not os.path.isdir(source))
            _bind(source, target, bind.get("recursive", False), bind.get("readonly", False))
        _driver(root, plan.get("driver") or {})
        os.chroot(root)
        os.chdir(plan["cwd"])
        _limits(plan)
    except (LaunchError, OSError, ValueError) as exc:
        print(f"benchlib rootfs launcher: {exc}", file=sys.stderr)
        return 125
    argv, env = plan["argv"], plan["env"]
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as exc:
        print(f"benchlib rootfs launcher: cannot run {argv[0]!r} in {root}: {exc.strerror}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
