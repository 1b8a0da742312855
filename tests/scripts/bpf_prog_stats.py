#!/usr/bin/env python3
"""Kernel run time of the BPF programs behind the link pins under a bpffs folder.

usage: bpf_prog_stats.py snapshot BPFFS_DIR   -> one JSON line {prog_id: [name, run_cnt, run_time_ns, pin]}
       bpf_prog_stats.py summary LOG           -> per folder and program: runs, total, ns per run
                                                  (from the last non-empty snapshot of each folder)

The counters move only while kernel.bpf_stats_enabled=1 (socket-lb-prog-stats.sh sets it for
one run of the bench and sets it back). No bpftool needed: raw bpf(2) through ctypes
(BPF_OBJ_GET on the pin, BPF_OBJ_GET_INFO_BY_FD on the link for its program id, then on
the program for run_time_ns / run_cnt at their offsets in struct bpf_prog_info)."""
import ctypes, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
SYS_bpf = 321
BPF_OBJ_GET, BPF_PROG_GET_FD_BY_ID, BPF_OBJ_GET_INFO_BY_FD = 7, 13, 15

def bpf(cmd, attr):
    r = libc.syscall(SYS_bpf, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    if r < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return r

def obj_get(path):
    b = ctypes.create_string_buffer(path.encode())
    attr = (ctypes.c_uint8 * 128)()
    ctypes.memmove(attr, ctypes.byref(ctypes.c_uint64(ctypes.addressof(b))), 8)
    return bpf(BPF_OBJ_GET, attr)

def info(fd, size):
    buf = (ctypes.c_uint8 * size)()
    attr = (ctypes.c_uint8 * 128)()
    ctypes.memmove(attr, ctypes.byref(ctypes.c_uint32(fd)), 4)
    ctypes.memmove(ctypes.addressof(attr) + 4, ctypes.byref(ctypes.c_uint32(size)), 4)
    ctypes.memmove(ctypes.addressof(attr) + 8, ctypes.byref(ctypes.c_uint64(ctypes.addressof(buf))), 8)
    bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
    return bytes(buf)

def prog_by_id(pid):
    attr = (ctypes.c_uint8 * 128)()
    ctypes.memmove(attr, ctypes.byref(ctypes.c_uint32(pid)), 4)
    return bpf(BPF_PROG_GET_FD_BY_ID, attr)

def snapshot(folder):
    out = {}
    for root, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(root, f)
            try:
                fd = obj_get(p)
            except OSError:
                continue
            if os.readlink(f"/proc/self/fd/{fd}") != "anon_inode:bpf-link":
                os.close(fd)
                continue
            try:
                li = info(fd, 64)  # struct bpf_link_info: type, id, prog_id
            except OSError:
                os.close(fd)
                continue
            os.close(fd)
            prog_id = int.from_bytes(li[8:12], "little")
            try:
                pfd = prog_by_id(prog_id)
            except OSError:
                continue
            pi = info(pfd, 232)
            os.close(pfd)
            name = pi[64:80].split(b"\0")[0].decode()
            run_time = int.from_bytes(pi[192:200], "little")
            run_cnt = int.from_bytes(pi[200:208], "little")
            out[prog_id] = [name, run_cnt, run_time, p]
    return out


def summary(log):
    import collections
    last = {}
    for line in open(log):
        if line.startswith("DIR "):
            _, d, js = line.split(" ", 2)
            try:
                data = json.loads(js)
            except ValueError:
                continue
            if data:
                last[d] = data
    for d, data in sorted(last.items()):
        print(d)
        agg = collections.defaultdict(lambda: [0, 0])
        for name, cnt, t, _ in data.values():
            agg[name][0] += cnt
            agg[name][1] += t
        for name, (cnt, t) in sorted(agg.items()):
            if cnt:
                print(f"  {name:18} runs {cnt:9} total {t / 1e6:9.2f} ms  {t / cnt:7.0f} ns/run")


if sys.argv[1] == "snapshot":
    print(json.dumps(snapshot(sys.argv[2])))
else:
    summary(sys.argv[2])
