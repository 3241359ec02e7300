/*
 * The power-loss interposer (LD_PRELOAD): records, for the files under one data folder, what a
 * power cut would keep. What it records and how the records are replayed is described in
 * chaos-tests/src/powerloss/journal.rs; this file only writes the journal.
 *
 * Environment (all three, else the library does nothing):
 *   MERIDIAN_POWERLOSS_DATA     absolute path of the data folder; only paths under it are tracked
 *   MERIDIAN_POWERLOSS_JOURNAL  the journal file (outside the data folder), appended to
 *   MERIDIAN_POWERLOSS_SAVED    a folder on the same file system, where a file about to be
 *                               replaced by rename() is first hard-linked, so that a rename
 *                               that never became durable can be undone
 *
 * Every record is one line, written with one write(2) on an O_APPEND descriptor (the kernel
 * serialises appends to a regular file), after the call it describes returned, and before the
 * caller can act on it: a record of a sync is in the journal before any acknowledgement that
 * depends on that sync. Sizes and directory listings are taken *before* the real sync, so they
 * are a lower bound of what it made durable (bytes appended by another thread during the sync
 * are not counted).
 *
 * Wrappers use no locks and no malloc: per-descriptor state is two arrays of atomics, records
 * are formatted into stack buffers by hand, and the journal is written with the raw syscall (so
 * that our own write() wrapper is not re-entered). errno is kept as the real call left it.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#define MAX_FD 65536
#define PATH_CAP 4096

/* What a descriptor refers to. */
enum { K_NONE = 0, K_FILE = 1, K_FILE_DSYNC = 2, K_DIR = 3 };

static unsigned char kinds[MAX_FD];
static uint64_t inos[MAX_FD];
static int journal = -1;
static int enabled;
static char prefix[PATH_CAP];
static size_t prefix_len;
static char saved[PATH_CAP];
static unsigned long saved_seq;

/* The next definition of `fn` (libc's), looked up once. */
#define REAL(fn)                                                        \
    ({                                                                  \
        static void *real_;                                             \
        void *f_ = __atomic_load_n(&real_, __ATOMIC_ACQUIRE);           \
        if (!f_) {                                                      \
            f_ = dlsym(RTLD_NEXT, #fn);                                 \
            __atomic_store_n(&real_, f_, __ATOMIC_RELEASE);             \
        }                                                               \
        (__typeof__(&fn))f_;                                            \
    })

/* ---- records ---- */

struct rec {
    char *p;
    size_t n, cap;
    int overflow;
};

static void put_s(struct rec *r, const char *s) {
    size_t l = strlen(s);
    if (r->n + l + 1 >= r->cap) {
        r->overflow = 1;
        return;
    }
    memcpy(r->p + r->n, s, l);
    r->n += l;
}

static void put_c(struct rec *r, char c) {
    if (r->n + 2 >= r->cap) {
        r->overflow = 1;
        return;
    }
    r->p[r->n++] = c;
}

static void put_u(struct rec *r, unsigned long long v) {
    char d[24];
    int i = 0;
    do {
        d[i++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (i)
        put_c(r, d[--i]);
}

/* A path as the last field: a tab or a newline in it would break the line format. */
static void put_path(struct rec *r, const char *s) {
    if (strpbrk(s, "\t\n"))
        r->overflow = 1;
    else
        put_s(r, s);
}

static void emit(struct rec *r) {
    if (r->overflow) {
        static const char msg[] = "X\trecord too long or a path with a tab or newline\n";
        syscall(SYS_write, journal, msg, sizeof msg - 1);
        return;
    }
    r->p[r->n++] = '\n';
    syscall(SYS_write, journal, r->p, r->n);
}

#define REC(name, size) \
    char name##_buf[size]; \
    struct rec name = {name##_buf, 0, sizeof name##_buf, 0}

__attribute__((constructor)) static void init(void) {
    const char *d = getenv("MERIDIAN_POWERLOSS_DATA");
    const char *j = getenv("MERIDIAN_POWERLOSS_JOURNAL");
    const char *s = getenv("MERIDIAN_POWERLOSS_SAVED");
    if (!d || !j || !s || d[0] != '/' || strlen(d) >= PATH_CAP || strlen(s) >= PATH_CAP - 32)
        return;
    strcpy(prefix, d);
    prefix_len = strlen(prefix);
    while (prefix_len > 1 && prefix[prefix_len - 1] == '/')
        prefix[--prefix_len] = 0;
    strcpy(saved, s);
    journal = (int)syscall(SYS_openat, AT_FDCWD, j, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (journal < 0)
        return;
    enabled = 1;
    REC(r, 64);
    put_s(&r, "P\t");
    put_u(&r, (unsigned long long)getpid());
    emit(&r);
}

/* ---- paths and descriptors ---- */

/* The absolute form of (dirfd, path) in `out`; 1 when it is the data folder or under it. */
static int under(int dirfd, const char *path, char *out) {
    if (!enabled || !path)
        return 0;
    size_t n = 0;
    if (path[0] != '/') {
        if (dirfd == AT_FDCWD) {
            if (!getcwd(out, PATH_CAP))
                return 0;
            n = strlen(out);
        } else {
            char link[40];
            struct rec l = {link, 0, sizeof link, 0};
            put_s(&l, "/proc/self/fd/");
            put_u(&l, (unsigned long long)(dirfd < 0 ? 0 : dirfd));
            link[l.n] = 0;
            ssize_t m = readlink(link, out, PATH_CAP - 1);
            if (m < 0)
                return 0;
            n = (size_t)m;
        }
        if (n + 1 >= PATH_CAP)
            return 0;
        out[n++] = '/';
    }
    size_t l = strlen(path);
    if (n + l >= PATH_CAP)
        return 0;
    memcpy(out + n, path, l + 1);
    return strncmp(out, prefix, prefix_len) == 0 && (out[prefix_len] == '/' || out[prefix_len] == 0);
}

static unsigned char kind_of(int fd) {
    if (!enabled || fd < 0 || fd >= MAX_FD)
        return K_NONE;
    return __atomic_load_n(&kinds[fd], __ATOMIC_ACQUIRE);
}

static void forget(int fd) {
    if (fd >= 0 && fd < MAX_FD)
        __atomic_store_n(&kinds[fd], K_NONE, __ATOMIC_RELEASE);
}

static void copy_fd(int from, int to) {
    if (to < 0 || to >= MAX_FD)
        return;
    unsigned char k = kind_of(from);
    if (k != K_NONE)
        __atomic_store_n(&inos[to], __atomic_load_n(&inos[from], __ATOMIC_RELAXED), __ATOMIC_RELAXED);
    __atomic_store_n(&kinds[to], k, __ATOMIC_RELEASE);
}

/* O <ino> <created> <truncated> <size> <path>: a regular file under the folder was opened. */
static void opened(int fd, const char *abs, int flags, int created) {
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0)
        return;
    if (fd >= MAX_FD) {
        REC(r, 64);
        put_s(&r, "X\tdescriptor beyond the table");
        emit(&r);
        return;
    }
    if (S_ISDIR(st.st_mode)) {
        __atomic_store_n(&kinds[fd], K_DIR, __ATOMIC_RELEASE);
        return;
    }
    if (!S_ISREG(st.st_mode)) {
        forget(fd);
        return;
    }
    __atomic_store_n(&inos[fd], (uint64_t)st.st_ino, __ATOMIC_RELAXED);
    __atomic_store_n(&kinds[fd], (flags & O_DSYNC) ? K_FILE_DSYNC : K_FILE, __ATOMIC_RELEASE);
    REC(r, PATH_CAP + 128);
    put_s(&r, "O\t");
    put_u(&r, (unsigned long long)st.st_ino);
    put_s(&r, created ? "\t1\t" : "\t0\t");
    put_s(&r, (flags & O_TRUNC) ? "1\t" : "0\t");
    put_u(&r, (unsigned long long)st.st_size);
    put_c(&r, '\t');
    put_path(&r, abs);
    emit(&r);
}

typedef int (*open_fn)(const char *, int, ...);
typedef int (*openat_fn)(int, const char *, int, ...);

static int tracked_open(int dirfd, const char *path, int flags, mode_t mode, open_fn o, openat_fn oa) {
    char abs[PATH_CAP];
    if (!under(dirfd, path, abs))
        return o ? o(path, flags, mode) : oa(dirfd, path, flags, mode);
    int created = 0;
    if (flags & O_CREAT) {
        struct stat st;
        created = fstatat(dirfd, path, &st, 0) != 0 && errno == ENOENT;
    }
    int fd = o ? o(path, flags, mode) : oa(dirfd, path, flags, mode);
    int e = errno;
    opened(fd, abs, flags, created);
    errno = e;
    return fd;
}

static mode_t mode_arg(int flags, va_list ap) {
    return (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE ? (mode_t)va_arg(ap, int) : 0;
}

int open(const char *path, int flags, ...) {
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    return tracked_open(AT_FDCWD, path, flags, mode, REAL(open), NULL);
}

int open64(const char *path, int flags, ...) {
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    return tracked_open(AT_FDCWD, path, flags, mode, REAL(open64), NULL);
}

int openat(int dirfd, const char *path, int flags, ...) {
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    return tracked_open(dirfd, path, flags, mode, NULL, REAL(openat));
}

int openat64(int dirfd, const char *path, int flags, ...) {
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    return tracked_open(dirfd, path, flags, mode, NULL, REAL(openat64));
}

int creat(const char *path, mode_t mode) {
    return tracked_open(AT_FDCWD, path, O_CREAT | O_WRONLY | O_TRUNC, mode, REAL(open), NULL);
}

int creat64(const char *path, mode_t mode) {
    return tracked_open(AT_FDCWD, path, O_CREAT | O_WRONLY | O_TRUNC, mode, REAL(open64), NULL);
}

int close(int fd) {
    forget(fd);
    return REAL(close)(fd);
}

int fclose(FILE *f) {
    if (f)
        forget(fileno(f));
    return REAL(fclose)(f);
}

int dup(int fd) {
    int r = REAL(dup)(fd);
    int e = errno;
    if (r >= 0)
        copy_fd(fd, r);
    errno = e;
    return r;
}

int dup2(int fd, int to) {
    int r = REAL(dup2)(fd, to);
    int e = errno;
    if (r >= 0 && r != fd)
        copy_fd(fd, r);
    errno = e;
    return r;
}

int dup3(int fd, int to, int flags) {
    int r = REAL(dup3)(fd, to, flags);
    int e = errno;
    if (r >= 0)
        copy_fd(fd, r);
    errno = e;
    return r;
}

/* ---- data ---- */

/* W <ino> <offset> <length>: bytes written (offset -1: at the descriptor's position). */
static void wrote(int fd, long long off, ssize_t n) {
    unsigned char k = kind_of(fd);
    if ((k != K_FILE && k != K_FILE_DSYNC) || n <= 0)
        return;
    int e = errno;
    if (off < 0) {
        off_t end = lseek(fd, 0, SEEK_CUR);
        off = end < 0 ? 0 : (long long)end - n;
    }
    uint64_t ino = __atomic_load_n(&inos[fd], __ATOMIC_RELAXED);
    REC(r, 96);
    put_s(&r, "W\t");
    put_u(&r, ino);
    put_c(&r, '\t');
    put_u(&r, (unsigned long long)off);
    put_c(&r, '\t');
    put_u(&r, (unsigned long long)n);
    emit(&r);
    /* O_DSYNC / O_SYNC: the write is durable when it returns. */
    struct stat st;
    if (k == K_FILE_DSYNC && fstat(fd, &st) == 0) {
        REC(s, 96);
        put_s(&s, "S\t");
        put_u(&s, ino);
        put_c(&s, '\t');
        put_u(&s, (unsigned long long)st.st_size);
        put_s(&s, "\to_dsync");
        emit(&s);
    }
    errno = e;
}

ssize_t write(int fd, const void *b, size_t n) {
    ssize_t r = REAL(write)(fd, b, n);
    wrote(fd, -1, r);
    return r;
}

ssize_t writev(int fd, const struct iovec *v, int c) {
    ssize_t r = REAL(writev)(fd, v, c);
    wrote(fd, -1, r);
    return r;
}

ssize_t pwrite(int fd, const void *b, size_t n, off_t o) {
    ssize_t r = REAL(pwrite)(fd, b, n, o);
    wrote(fd, o, r);
    return r;
}

ssize_t pwrite64(int fd, const void *b, size_t n, off64_t o) {
    ssize_t r = REAL(pwrite64)(fd, b, n, o);
    wrote(fd, o, r);
    return r;
}

ssize_t pwritev(int fd, const struct iovec *v, int c, off_t o) {
    ssize_t r = REAL(pwritev)(fd, v, c, o);
    wrote(fd, o, r);
    return r;
}

ssize_t pwritev64(int fd, const struct iovec *v, int c, off64_t o) {
    ssize_t r = REAL(pwritev64)(fd, v, c, o);
    wrote(fd, o, r);
    return r;
}

/* T <ino> <length>: a size set. */
static void truncated(int fd, long long len, int ok) {
    if (!ok || (kind_of(fd) != K_FILE && kind_of(fd) != K_FILE_DSYNC))
        return;
    int e = errno;
    REC(r, 96);
    put_s(&r, "T\t");
    put_u(&r, __atomic_load_n(&inos[fd], __ATOMIC_RELAXED));
    put_c(&r, '\t');
    put_u(&r, (unsigned long long)(len < 0 ? 0 : len));
    emit(&r);
    errno = e;
}

int ftruncate(int fd, off_t len) {
    int r = REAL(ftruncate)(fd, len);
    truncated(fd, len, r == 0);
    return r;
}

int ftruncate64(int fd, off64_t len) {
    int r = REAL(ftruncate64)(fd, len);
    truncated(fd, len, r == 0);
    return r;
}

/* F <ino> <mode> <offset> <length>: space allocated (with KEEP_SIZE the size does not move). */
static void allocated(int fd, int mode, long long off, long long len, int ok) {
    if (!ok || (kind_of(fd) != K_FILE && kind_of(fd) != K_FILE_DSYNC))
        return;
    int e = errno;
    REC(r, 128);
    put_s(&r, "F\t");
    put_u(&r, __atomic_load_n(&inos[fd], __ATOMIC_RELAXED));
    put_c(&r, '\t');
    put_u(&r, (unsigned long long)(unsigned)mode);
    put_c(&r, '\t');
    put_u(&r, (unsigned long long)off);
    put_c(&r, '\t');
    put_u(&r, (unsigned long long)len);
    emit(&r);
    errno = e;
}

int fallocate(int fd, int mode, off_t off, off_t len) {
    int r = REAL(fallocate)(fd, mode, off, len);
    allocated(fd, mode, off, len, r == 0);
    return r;
}

int fallocate64(int fd, int mode, off64_t off, off64_t len) {
    int r = REAL(fallocate64)(fd, mode, off, len);
    allocated(fd, mode, off, len, r == 0);
    return r;
}

int posix_fallocate(int fd, off_t off, off_t len) {
    int r = REAL(posix_fallocate)(fd, off, len);
    allocated(fd, 0, off, len, r == 0);
    return r;
}

int posix_fallocate64(int fd, off64_t off, off64_t len) {
    int r = REAL(posix_fallocate64)(fd, off, len);
    allocated(fd, 0, off, len, r == 0);
    return r;
}

/* ---- syncs ---- */

/* Appends "\t<ino>:<name>" for every regular file in the folder open at `fd`. */
static void list_dir(int fd, struct rec *r) {
    int dfd = (int)syscall(SYS_openat, fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) {
        r->overflow = 1;
        return;
    }
    union {
        char b[8192];
        uint64_t align;
    } dents;
    long got;
    while ((got = syscall(SYS_getdents64, dfd, dents.b, sizeof dents.b)) > 0) {
        for (long pos = 0; pos < got;) {
            /* struct linux_dirent64: u64 ino, s64 off, u16 reclen, u8 type, name. */
            const char *d = dents.b + pos;
            unsigned short reclen;
            memcpy(&reclen, d + 16, sizeof reclen);
            const char *name = d + 19;
            pos += reclen;
            if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
                continue;
            struct stat st;
            if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode))
                continue;
            put_c(r, '\t');
            put_u(r, (unsigned long long)st.st_ino);
            put_c(r, ':');
            put_path(r, name);
        }
    }
    if (got < 0)
        r->overflow = 1;
    syscall(SYS_close, dfd);
}

/*
 * S <ino> <size> <how>: a regular file synced up to <size>.
 * D <folder> [<ino>:<name>]...: a folder synced; its regular files are the ones listed.
 */
static int synced(int fd, int (*real)(int), const char *how) {
    unsigned char k = kind_of(fd);
    if (k == K_NONE)
        return real(fd);
    if (k == K_DIR) {
        char path[PATH_CAP];
        char link[40];
        struct rec l = {link, 0, sizeof link, 0};
        put_s(&l, "/proc/self/fd/");
        put_u(&l, (unsigned long long)fd);
        link[l.n] = 0;
        ssize_t m = readlink(link, path, sizeof path - 1);
        REC(r, 32768);
        if (m < 0) {
            r.overflow = 1;
        } else {
            path[m] = 0;
            put_s(&r, "D\t");
            put_path(&r, path);
            list_dir(fd, &r);
        }
        int ret = real(fd);
        int e = errno;
        if (ret == 0)
            emit(&r);
        errno = e;
        return ret;
    }
    struct stat st;
    int have = fstat(fd, &st) == 0;
    int ret = real(fd);
    int e = errno;
    if (ret == 0 && have) {
        REC(r, 96);
        put_s(&r, "S\t");
        put_u(&r, __atomic_load_n(&inos[fd], __ATOMIC_RELAXED));
        put_c(&r, '\t');
        put_u(&r, (unsigned long long)st.st_size);
        put_c(&r, '\t');
        put_s(&r, how);
        emit(&r);
    }
    errno = e;
    return ret;
}

int fsync(int fd) {
    return synced(fd, REAL(fsync), "fsync");
}

int fdatasync(int fd) {
    return synced(fd, REAL(fdatasync), "fdatasync");
}

/* Y <ino> <offset> <length>: sync_file_range, recorded but not durable: it starts or waits for
 * write-back of data pages only, never the file's metadata (its size, its blocks) nor the
 * disk's cache, so after a power cut nothing it wrote is promised. */
int sync_file_range(int fd, off64_t off, off64_t len, unsigned int flags) {
    int r = REAL(sync_file_range)(fd, off, len, flags);
    int e = errno;
    if (r == 0 && (kind_of(fd) == K_FILE || kind_of(fd) == K_FILE_DSYNC)) {
        REC(y, 96);
        put_s(&y, "Y\t");
        put_u(&y, __atomic_load_n(&inos[fd], __ATOMIC_RELAXED));
        put_c(&y, '\t');
        put_u(&y, (unsigned long long)off);
        put_c(&y, '\t');
        put_u(&y, (unsigned long long)len);
        emit(&y);
    }
    errno = e;
    return r;
}

/* ---- names ---- */

/*
 * R <ino> <saved or -> <from> <to>: a rename; when it replaced a regular file, that file's
 * inode was first hard-linked into the saved folder, so the old content can come back if the
 * rename never became durable. U <path>: an unlink.
 */
static int tracked_rename(int olddir, const char *old, int newdir, const char *new_, unsigned flags,
                          int (*fn)(int, const char *, int, const char *, unsigned)) {
    char from[PATH_CAP], to[PATH_CAP], keep[PATH_CAP];
    int from_in = under(olddir, old, from);
    int to_in = under(newdir, new_, to);
    if (!from_in && !to_in)
        return fn(olddir, old, newdir, new_, flags);
    struct stat src, dst;
    int have_src = fstatat(olddir, old, &src, AT_SYMLINK_NOFOLLOW) == 0;
    int kept = 0;
    if (to_in && fstatat(newdir, new_, &dst, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(dst.st_mode)) {
        struct rec k = {keep, 0, sizeof keep, 0};
        put_s(&k, saved);
        put_s(&k, "/r");
        put_u(&k, __atomic_add_fetch(&saved_seq, 1, __ATOMIC_RELAXED));
        put_c(&k, '-');
        put_u(&k, (unsigned long long)getpid());
        keep[k.n] = 0;
        kept = !k.overflow && syscall(SYS_linkat, AT_FDCWD, to, AT_FDCWD, keep, 0) == 0;
    }
    int r = fn(olddir, old, newdir, new_, flags);
    int e = errno;
    if (r != 0) {
        if (kept)
            syscall(SYS_unlinkat, AT_FDCWD, keep, 0);
    } else if (to_in) {
        REC(rec, 3 * PATH_CAP + 64);
        put_s(&rec, "R\t");
        put_u(&rec, have_src ? (unsigned long long)src.st_ino : 0);
        put_c(&rec, '\t');
        put_path(&rec, kept ? keep : "-");
        put_c(&rec, '\t');
        put_path(&rec, from_in ? from : "-");
        put_c(&rec, '\t');
        put_path(&rec, to);
        emit(&rec);
    } else {
        /* Moved out of the folder: for the model, an unlink. */
        REC(rec, PATH_CAP + 16);
        put_s(&rec, "U\t");
        put_path(&rec, from);
        emit(&rec);
    }
    errno = e;
    return r;
}

static int call_renameat2(int od, const char *o, int nd, const char *n, unsigned f) {
    return REAL(renameat2)(od, o, nd, n, f);
}

static int call_renameat(int od, const char *o, int nd, const char *n, unsigned f) {
    (void)f;
    return REAL(renameat)(od, o, nd, n);
}

static int call_rename(int od, const char *o, int nd, const char *n, unsigned f) {
    (void)od;
    (void)nd;
    (void)f;
    return REAL(rename)(o, n);
}

int rename(const char *old, const char *new_) {
    return tracked_rename(AT_FDCWD, old, AT_FDCWD, new_, 0, call_rename);
}

int renameat(int od, const char *old, int nd, const char *new_) {
    return tracked_rename(od, old, nd, new_, 0, call_renameat);
}

int renameat2(int od, const char *old, int nd, const char *new_, unsigned flags) {
    return tracked_rename(od, old, nd, new_, flags, call_renameat2);
}

static void unlinked(int dirfd, const char *path, int ok, int flags) {
    char abs[PATH_CAP];
    if (!ok || (flags & AT_REMOVEDIR))
        return;
    int e = errno;
    /* Resolving after the fact is fine: only the name is needed, and the folder still exists. */
    if (under(dirfd, path, abs)) {
        REC(r, PATH_CAP + 16);
        put_s(&r, "U\t");
        put_path(&r, abs);
        emit(&r);
    }
    errno = e;
}

int unlink(const char *path) {
    int r = REAL(unlink)(path);
    unlinked(AT_FDCWD, path, r == 0, 0);
    return r;
}

int unlinkat(int dirfd, const char *path, int flags) {
    int r = REAL(unlinkat)(dirfd, path, flags);
    unlinked(dirfd, path, r == 0, flags);
    return r;
}
