/* LD_PRELOAD shim: a slow network volume, made of a local directory and a fixed delay per operation.
 *
 * Every file-system call that names a path under $TKV_DELAY_PREFIX, or uses a descriptor opened there,
 * sleeps $TKV_DELAY_US microseconds before it runs: what one round trip to a network volume server costs.
 * The sleep (nanosleep) burns no CPU, so CPU seconds stay those of the real work, and both the agent and
 * vLLM's fs tier (its Python code and its C extension, fs_io_C) go through the same libc entry points.
 * close() is not delayed (a network client answers it locally for files written with O_DIRECT).
 * Built by bench/shims.py with gcc into a cache directory outside the repository.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define MAX_FD 65536
static unsigned char marked[MAX_FD];
static const char *prefix;
static size_t prefix_len;
static struct timespec delay;

__attribute__((constructor)) static void init(void) {
    prefix = getenv("TKV_DELAY_PREFIX");
    prefix_len = prefix ? strlen(prefix) : 0;
    const char *us = getenv("TKV_DELAY_US");
    long value = us ? atol(us) : 0;
    delay.tv_sec = value / 1000000;
    delay.tv_nsec = (value % 1000000) * 1000;
}

static void pause_op(void) {
    struct timespec left = delay;
    while (nanosleep(&left, &left) != 0) {
    }
}

static int on_volume(const char *path) {
    return prefix_len && path && strncmp(path, prefix, prefix_len) == 0;
}

static int fd_marked(int fd) { return fd >= 0 && fd < MAX_FD && marked[fd]; }

static int at_volume(int dirfd, const char *path) {
    if (path && path[0] == '/') return on_volume(path);
    return fd_marked(dirfd);
}

static void mark(int fd, int on) {
    if (fd >= 0 && fd < MAX_FD) marked[fd] = (unsigned char)on;
}

#define REAL(name) static __typeof__(name) *real; if (!real) real = (__typeof__(name) *)dlsym(RTLD_NEXT, #name)

static mode_t mode_arg(int flags, va_list ap) {
    return (flags & (O_CREAT | O_TMPFILE)) ? (mode_t)va_arg(ap, int) : 0;
}

int open(const char *path, int flags, ...) {
    REAL(open);
    va_list ap; va_start(ap, flags); mode_t mode = mode_arg(flags, ap); va_end(ap);
    int hit = on_volume(path);
    if (hit) pause_op();
    int fd = real(path, flags, mode);
    mark(fd, hit);
    return fd;
}

int open64(const char *path, int flags, ...) {
    REAL(open64);
    va_list ap; va_start(ap, flags); mode_t mode = mode_arg(flags, ap); va_end(ap);
    int hit = on_volume(path);
    if (hit) pause_op();
    int fd = real(path, flags, mode);
    mark(fd, hit);
    return fd;
}

int openat(int dirfd, const char *path, int flags, ...) {
    REAL(openat);
    va_list ap; va_start(ap, flags); mode_t mode = mode_arg(flags, ap); va_end(ap);
    int hit = at_volume(dirfd, path);
    if (hit) pause_op();
    int fd = real(dirfd, path, flags, mode);
    mark(fd, hit);
    return fd;
}

int openat64(int dirfd, const char *path, int flags, ...) {
    REAL(openat64);
    va_list ap; va_start(ap, flags); mode_t mode = mode_arg(flags, ap); va_end(ap);
    int hit = at_volume(dirfd, path);
    if (hit) pause_op();
    int fd = real(dirfd, path, flags, mode);
    mark(fd, hit);
    return fd;
}

int close(int fd) {
    REAL(close);
    mark(fd, 0);
    return real(fd);
}

#define FD_CALL(ret, name, params, args, fd) \
    ret name params { REAL(name); if (fd_marked(fd)) pause_op(); return real args; }
#define PATH_CALL(ret, name, params, args, path) \
    ret name params { REAL(name); if (on_volume(path)) pause_op(); return real args; }
#define AT_CALL(ret, name, params, args, dirfd, path) \
    ret name params { REAL(name); if (at_volume(dirfd, path)) pause_op(); return real args; }

FD_CALL(ssize_t, read, (int fd, void *buf, size_t n), (fd, buf, n), fd)
FD_CALL(ssize_t, write, (int fd, const void *buf, size_t n), (fd, buf, n), fd)
FD_CALL(ssize_t, pread64, (int fd, void *buf, size_t n, off64_t off), (fd, buf, n, off), fd)
FD_CALL(ssize_t, pwrite64, (int fd, const void *buf, size_t n, off64_t off), (fd, buf, n, off), fd)
FD_CALL(ssize_t, preadv64, (int fd, const struct iovec *v, int c, off64_t off), (fd, v, c, off), fd)
FD_CALL(ssize_t, pwritev64, (int fd, const struct iovec *v, int c, off64_t off), (fd, v, c, off), fd)
FD_CALL(ssize_t, preadv64v2, (int fd, const struct iovec *v, int c, off64_t off, int fl), (fd, v, c, off, fl), fd)
FD_CALL(ssize_t, pwritev64v2, (int fd, const struct iovec *v, int c, off64_t off, int fl), (fd, v, c, off, fl), fd)
FD_CALL(int, fchmod, (int fd, mode_t mode), (fd, mode), fd)
FD_CALL(int, fdatasync, (int fd), (fd), fd)
FD_CALL(int, fsync, (int fd), (fd), fd)
FD_CALL(int, fstat64, (int fd, struct stat64 *st), (fd, st), fd)
FD_CALL(int, fstat, (int fd, struct stat *st), (fd, st), fd)
PATH_CALL(int, access, (const char *p, int m), (p, m), p)
PATH_CALL(int, stat64, (const char *p, struct stat64 *st), (p, st), p)
PATH_CALL(int, stat, (const char *p, struct stat *st), (p, st), p)
PATH_CALL(int, lstat64, (const char *p, struct stat64 *st), (p, st), p)
PATH_CALL(int, lstat, (const char *p, struct stat *st), (p, st), p)
PATH_CALL(int, mkdir, (const char *p, mode_t m), (p, m), p)
PATH_CALL(int, unlink, (const char *p), (p), p)
PATH_CALL(int, rmdir, (const char *p), (p), p)
PATH_CALL(int, rename, (const char *a, const char *b), (a, b), a)
PATH_CALL(int, link, (const char *a, const char *b), (a, b), a)
AT_CALL(int, faccessat, (int d, const char *p, int m, int f), (d, p, m, f), d, p)
AT_CALL(int, fstatat64, (int d, const char *p, struct stat64 *st, int f), (d, p, st, f), d, p)
AT_CALL(int, fstatat, (int d, const char *p, struct stat *st, int f), (d, p, st, f), d, p)
AT_CALL(int, statx, (int d, const char *p, int f, unsigned m, struct statx *st), (d, p, f, m, st), d, p)
AT_CALL(int, mkdirat, (int d, const char *p, mode_t m), (d, p, m), d, p)
AT_CALL(int, unlinkat, (int d, const char *p, int f), (d, p, f), d, p)
AT_CALL(int, renameat, (int d, const char *a, int e, const char *b), (d, a, e, b), d, a)
AT_CALL(int, renameat2, (int d, const char *a, int e, const char *b, unsigned f), (d, a, e, b, f), d, a)
AT_CALL(int, linkat, (int d, const char *a, int e, const char *b, int f), (d, a, e, b, f), d, a)
AT_CALL(int, utimensat, (int d, const char *p, const struct timespec t[2], int f), (d, p, t, f), d, p)
FD_CALL(int, futimens, (int fd, const struct timespec t[2]), (fd, t), fd)
