/* Fault injection at the syscall boundary, for tests/test_syscall_faults.py.
 *
 * Built by the test with `cc -shared -fPIC` and loaded with LD_PRELOAD into a child
 * interpreter, so every fault stays inside that process. It interposes the libc functions the
 * loops call for socket, pipe and epoll I/O and forwards to the real ones (dlsym RTLD_NEXT),
 * except where a rule says to fail.
 *
 * The child arms rules through ctypes (the symbols are global in the process):
 *
 *   fault_arm(name, fd, err, skip, count, limit)
 *       For calls of `name` ("recv", "send", ...) on `fd` (-1: any fd; for socket() the fd is
 *       ignored): let `skip` matching calls through, then act on the next `count` calls
 *       (-1: all of them). Acting means failing with errno `err`, or, when `err` is 0,
 *       passing the call on with its length cut to `limit` bytes (short reads and writes).
 *   fault_clear()            drop every rule
 *   fault_hits(name)         how many calls a rule of `name` acted on
 *   fault_calls(name)        how many calls of `name` matched a rule's fd
 *
 * Rules are few and written before the faulted I/O starts; the counters are atomics, so the
 * loop thread and a thread in epoll_wait may both pass through.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

enum { MAX_RULES = 16 };

struct rule {
    char name[16];
    int fd;
    int err;
    long skip;
    long count;
    long limit;
    long seen;
    long hits;
    int live;
};

static struct rule rules[MAX_RULES];

int fault_arm(const char *name, int fd, int err, long skip, long count, long limit) {
    for (int i = 0; i < MAX_RULES; i++) {
        if (!rules[i].live) {
            strncpy(rules[i].name, name, sizeof rules[i].name - 1);
            rules[i].fd = fd;
            rules[i].err = err;
            rules[i].skip = skip;
            rules[i].count = count;
            rules[i].limit = limit;
            rules[i].seen = 0;
            rules[i].hits = 0;
            __atomic_store_n(&rules[i].live, 1, __ATOMIC_RELEASE);
            return i;
        }
    }
    return -1;
}

void fault_clear(void) {
    for (int i = 0; i < MAX_RULES; i++) __atomic_store_n(&rules[i].live, 0, __ATOMIC_RELEASE);
}

static long sum(const char *name, int hits) {
    long total = 0;
    for (int i = 0; i < MAX_RULES; i++)
        if (strcmp(rules[i].name, name) == 0)
            total += __atomic_load_n(hits ? &rules[i].hits : &rules[i].seen, __ATOMIC_RELAXED);
    return total;
}

long fault_hits(const char *name) { return sum(name, 1); }
long fault_calls(const char *name) { return sum(name, 0); }

/* What the rules say about this call: 0 = pass through unchanged, -1 = fail (errno set),
 * 1 = pass through with the length cut to *limit. Every rule on this call and fd counts the
 * call, so rules with consecutive `skip` ranges make a sequence; the first in range acts. */
static int decide(const char *name, int fd, long *limit) {
    int verdict = 0;
    for (int i = 0; i < MAX_RULES; i++) {
        struct rule *r = &rules[i];
        if (!__atomic_load_n(&r->live, __ATOMIC_ACQUIRE) || strcmp(r->name, name) != 0) continue;
        if (r->fd != -1 && r->fd != fd) continue;
        long n = __atomic_fetch_add(&r->seen, 1, __ATOMIC_RELAXED);
        if (verdict || n < r->skip || (r->count != -1 && n >= r->skip + r->count)) continue;
        __atomic_fetch_add(&r->hits, 1, __ATOMIC_RELAXED);
        if (r->err) {
            errno = r->err;
            verdict = -1;
        } else {
            *limit = r->limit;
            verdict = 1;
        }
    }
    return verdict;
}

#define REAL(name) \
    static __typeof__(name) *real_##name; \
    if (!real_##name) real_##name = (__typeof__(name) *)dlsym(RTLD_NEXT, #name)

static size_t cut(size_t len, int verdict, long limit) {
    return verdict == 1 && (size_t)limit < len ? (size_t)limit : len;
}

/* A copy of `iov` holding at most `limit` bytes; returns the new iovec count. */
static int cut_iov(const struct iovec *iov, int n, struct iovec *out, long limit) {
    int k = 0;
    size_t left = (size_t)limit;
    for (; k < n && k < 1024 && left > 0; k++) {
        out[k] = iov[k];
        if (out[k].iov_len > left) out[k].iov_len = left;
        left -= out[k].iov_len;
    }
    return k;
}

ssize_t recv(int fd, void *buf, size_t len, int flags) {
    REAL(recv);
    long limit = 0;
    int v = decide("recv", fd, &limit);
    if (v < 0) return -1;
    return real_recv(fd, buf, cut(len, v, limit), flags);
}

ssize_t read(int fd, void *buf, size_t len) {
    REAL(read);
    long limit = 0;
    int v = decide("read", fd, &limit);
    if (v < 0) return -1;
    return real_read(fd, buf, cut(len, v, limit));
}

ssize_t send(int fd, const void *buf, size_t len, int flags) {
    REAL(send);
    long limit = 0;
    int v = decide("send", fd, &limit);
    if (v < 0) return -1;
    return real_send(fd, buf, cut(len, v, limit), flags);
}

ssize_t write(int fd, const void *buf, size_t len) {
    REAL(write);
    long limit = 0;
    int v = decide("write", fd, &limit);
    if (v < 0) return -1;
    return real_write(fd, buf, cut(len, v, limit));
}

ssize_t sendmsg(int fd, const struct msghdr *msg, int flags) {
    REAL(sendmsg);
    long limit = 0;
    int v = decide("sendmsg", fd, &limit);
    if (v < 0) return -1;
    if (v == 1) {
        struct iovec iov[1024];
        struct msghdr copy = *msg;
        copy.msg_iovlen = cut_iov(msg->msg_iov, (int)msg->msg_iovlen, iov, limit);
        copy.msg_iov = iov;
        return real_sendmsg(fd, &copy, flags);
    }
    return real_sendmsg(fd, msg, flags);
}

ssize_t writev(int fd, const struct iovec *iov, int n) {
    REAL(writev);
    long limit = 0;
    int v = decide("writev", fd, &limit);
    if (v < 0) return -1;
    if (v == 1) {
        struct iovec copy[1024];
        return real_writev(fd, copy, cut_iov(iov, n, copy, limit));
    }
    return real_writev(fd, iov, n);
}

int accept4(int fd, struct sockaddr *addr, socklen_t *addrlen, int flags) {
    REAL(accept4);
    long limit = 0;
    if (decide("accept4", fd, &limit) < 0) return -1;
    return real_accept4(fd, addr, addrlen, flags);
}

int accept(int fd, struct sockaddr *addr, socklen_t *addrlen) {
    REAL(accept);
    long limit = 0;
    if (decide("accept", fd, &limit) < 0) return -1;
    return real_accept(fd, addr, addrlen);
}

int socket(int domain, int type, int protocol) {
    REAL(socket);
    long limit = 0;
    if (decide("socket", -1, &limit) < 0) return -1;
    return real_socket(domain, type, protocol);
}

int shutdown(int fd, int how) {
    REAL(shutdown);
    long limit = 0;
    if (decide("shutdown", fd, &limit) < 0) return -1;
    return real_shutdown(fd, how);
}

int epoll_ctl(int epfd, int op, int fd, struct epoll_event *event) {
    REAL(epoll_ctl);
    long limit = 0;
    /* The rule's fd is the watched fd, not the epoll instance. */
    if (decide("epoll_ctl", fd, &limit) < 0) return -1;
    return real_epoll_ctl(epfd, op, fd, event);
}

int epoll_wait(int epfd, struct epoll_event *events, int maxevents, int timeout) {
    REAL(epoll_wait);
    long limit = 0;
    if (decide("epoll_wait", -1, &limit) < 0) return -1;
    return real_epoll_wait(epfd, events, maxevents, timeout);
}
