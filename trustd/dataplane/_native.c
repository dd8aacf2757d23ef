/*
 * trustd.dataplane._native: the native data-plane core of ``trustd proxy``.
 *
 * Worker threads, each with its own epoll loop, accept connections on the
 * listening sockets Python hands over, sniff (PERMISSIVE/STRICT), run the TLS
 * handshake on OpenSSL, decide the peer from a per-generation decision cache,
 * connect the app (inbound) or the destination (outbound) and pump bytes.
 * None of that holds or takes the GIL.
 *
 * Python keeps the control plane. Per listener it publishes a generation
 * (``configure``): the SSL_CTX of the current identity, the mode (STRICT,
 * PERMISSIVE, DISABLE) or the outbound transport, whether an unauthenticated
 * plaintext peer is allowed, and the mode epoch. Each generation carries its
 * own decision cache, keyed by the SHA-256 of the peer's leaf certificate: a
 * hit (allowed or denied, within the leaf's validity) is decided in C; a miss
 * sends the leaf and the verified chain to Python once (a "verify" event),
 * which runs the strict SVID check and the authorization and answers with
 * ``resolve``; the answer is cached for that generation. A new generation
 * (new SVID, bundle or policy) starts with an empty cache.
 *
 * SSL_CTX lifetime: each connection's SSL holds a reference on the context
 * of its generation, and each generation holds one; an old context is freed
 * when its last connection closes.
 *
 * Sessions resume only from the session cache of the context that verified
 * the peer (one context per SVID and bundle), and every resumed session is
 * decided again like a full handshake (see the chain store below).
 *
 * Denials and upstream failures are queued as events; an eventfd tells the
 * asyncio loop to fetch them.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_WORKERS 64
#define BUFSZ (64 * 1024) /* bytes read at a time */
#define BUFCAP (BUFSZ + 4096) /* room for BUFSZ of plaintext as TLS records */
#define POOL_MAX 64 /* free buffers kept per worker */
#define CACHE_BUCKETS 1024
#define CACHE_MAX 8192
#define AGAIN (-2)

enum { MODE_STRICT = 0, MODE_PERMISSIVE = 1, MODE_DISABLE = 2 };
enum { KIND_INBOUND = 0, KIND_OUTBOUND = 1 };
enum { H_LISTEN = 1, H_WAKE, H_SIDE };
enum { S_SNIFF = 1, S_HANDSHAKE, S_VERDICT, S_CONNECT, S_PUMP, S_DEAD };
enum { T_NONE = 0, T_SNIFF, T_HANDSHAKE, T_CONNECT, T_COUNT };
enum { EV_DENY = 1, EV_VERIFY, EV_UPSTREAM };

/* sniff verdicts (the same as trustd.dataplane.sniff) */
enum { SN_MORE = 0, SN_TLS, SN_PLAINTEXT };

static int classify(const unsigned char *p, size_t n) {
    if (n >= 1 && p[0] != 0x16) return SN_PLAINTEXT;
    if (n >= 2 && p[1] != 0x03) return SN_PLAINTEXT;
    if (n >= 3) return p[2] <= 0x04 ? SN_TLS : SN_PLAINTEXT;
    return SN_MORE;
}

static int64_t mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t real_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static char *xstrdup(const char *s) {
    if (s == NULL) return NULL;
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

/* ------------------------------------------------------------------------ */
/* generations and their decision caches                                     */

typedef struct centry {
    unsigned char key[32];
    int allowed;
    int64_t not_before, not_after; /* the leaf's validity, Unix seconds */
    char *reason, *detail, *peer_id;
    struct centry *next;
} centry;

typedef struct lconf {
    int refs; /* atomic */
    int mode;
    int mtls; /* outbound: originate mTLS */
    int plaintext_allowed;
    char *plaintext_detail;
    uint64_t epoch;
    uint64_t gen;
    SSL_CTX *ctx; /* NULL when the listener needs none */
    pthread_mutex_t mu;
    centry *buckets[CACHE_BUCKETS];
    int entries;
} lconf;

static void lconf_ref(lconf *lc) { __atomic_add_fetch(&lc->refs, 1, __ATOMIC_RELAXED); }

static void lconf_unref(lconf *lc) {
    if (lc == NULL || __atomic_sub_fetch(&lc->refs, 1, __ATOMIC_ACQ_REL) != 0) return;
    for (int i = 0; i < CACHE_BUCKETS; i++) {
        centry *e = lc->buckets[i];
        while (e) {
            centry *n = e->next;
            free(e->reason);
            free(e->detail);
            free(e->peer_id);
            free(e);
            e = n;
        }
    }
    if (lc->ctx) SSL_CTX_free(lc->ctx);
    free(lc->plaintext_detail);
    pthread_mutex_destroy(&lc->mu);
    free(lc);
}

static unsigned bucket_of(const unsigned char *key) {
    return ((unsigned)key[0] | ((unsigned)key[1] << 8)) % CACHE_BUCKETS;
}

/* copies the entry's strings out under the lock; returns 1 on a hit */
static int cache_get(lconf *lc, const unsigned char *key, int64_t now_s, int *allowed,
                     char **reason, char **detail, char **peer_id) {
    int hit = 0;
    pthread_mutex_lock(&lc->mu);
    for (centry *e = lc->buckets[bucket_of(key)]; e; e = e->next) {
        if (memcmp(e->key, key, 32) == 0) {
            if (now_s < e->not_before || now_s > e->not_after) break; /* ask again */
            hit = 1;
            *allowed = e->allowed;
            *reason = xstrdup(e->reason);
            *detail = xstrdup(e->detail);
            *peer_id = xstrdup(e->peer_id);
            break;
        }
    }
    pthread_mutex_unlock(&lc->mu);
    return hit;
}

static void cache_put(lconf *lc, const unsigned char *key, int allowed, int64_t nb, int64_t na,
                      const char *reason, const char *detail, const char *peer_id) {
    pthread_mutex_lock(&lc->mu);
    unsigned b = bucket_of(key);
    for (centry *e = lc->buckets[b]; e; e = e->next) {
        if (memcmp(e->key, key, 32) == 0) {
            pthread_mutex_unlock(&lc->mu);
            return;
        }
    }
    if (lc->entries < CACHE_MAX) {
        centry *e = calloc(1, sizeof *e);
        if (e) {
            memcpy(e->key, key, 32);
            e->allowed = allowed;
            e->not_before = nb;
            e->not_after = na;
            e->reason = xstrdup(reason);
            e->detail = xstrdup(detail);
            e->peer_id = xstrdup(peer_id);
            e->next = lc->buckets[b];
            lc->buckets[b] = e;
            lc->entries++;
        }
    }
    pthread_mutex_unlock(&lc->mu);
}

/* ------------------------------------------------------------------------ */
/* verified chains, per SSL_CTX: what a resumed session is decided on        */
/*
 * Server contexts resume sessions from their own session cache (TLS 1.2
 * session IDs, TLS 1.3 stateful tickets), under a random session-ID context.
 * There is one SSL_CTX per identity version (SVID and bundles), so a session
 * only ever resumes under the bundle that verified its peer: a new bundle
 * means a new context with an empty cache, and a full handshake. (A stateful
 * cache, not stateless tickets: a ticket would make OpenSSL decrypt and parse
 * the peer certificate again on every resumption.) A resumed session carries
 * the peer's leaf but not the chain, so each context keeps the chains it
 * verified in full handshakes, keyed by the leaf's SHA-256; a resumed
 * session is then decided like a full handshake (the decision cache, else
 * Python's SVID check and authorization on that chain), and refused when
 * its chain is unknown.
 */

typedef struct chentry {
    unsigned char key[32];
    STACK_OF(X509) *chain;
    struct chentry *next;
} chentry;

typedef struct chainstore {
    pthread_mutex_t mu;
    chentry *buckets[CACHE_BUCKETS];
    int entries;
} chainstore;

static int chain_index = -1;

static void chainstore_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
                            void *argp) {
    chainstore *cs = ptr;
    if (!cs) return;
    for (int i = 0; i < CACHE_BUCKETS; i++) {
        chentry *e = cs->buckets[i];
        while (e) {
            chentry *n = e->next;
            sk_X509_pop_free(e->chain, X509_free);
            free(e);
            e = n;
        }
    }
    pthread_mutex_destroy(&cs->mu);
    free(cs);
}

static chainstore *chainstore_of(SSL *ssl) {
    return chain_index < 0 ? NULL : SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), chain_index);
}

static void chain_put(chainstore *cs, const unsigned char *key, STACK_OF(X509) *chain) {
    unsigned b = ((unsigned)key[0] | ((unsigned)key[1] << 8)) % CACHE_BUCKETS;
    pthread_mutex_lock(&cs->mu);
    for (chentry *e = cs->buckets[b]; e; e = e->next) {
        if (memcmp(e->key, key, 32) == 0) {
            pthread_mutex_unlock(&cs->mu);
            return;
        }
    }
    if (cs->entries < CACHE_MAX) {
        chentry *e = calloc(1, sizeof *e);
        if (e && (e->chain = X509_chain_up_ref(chain)) != NULL) {
            memcpy(e->key, key, 32);
            e->next = cs->buckets[b];
            cs->buckets[b] = e;
            cs->entries++;
        } else {
            free(e);
        }
    }
    pthread_mutex_unlock(&cs->mu);
}

/* a new reference to the chain verified for this leaf, or NULL */
static STACK_OF(X509) *chain_get(chainstore *cs, const unsigned char *key) {
    unsigned b = ((unsigned)key[0] | ((unsigned)key[1] << 8)) % CACHE_BUCKETS;
    STACK_OF(X509) *out = NULL;
    pthread_mutex_lock(&cs->mu);
    for (chentry *e = cs->buckets[b]; e; e = e->next) {
        if (memcmp(e->key, key, 32) == 0) {
            out = X509_chain_up_ref(e->chain);
            break;
        }
    }
    pthread_mutex_unlock(&cs->mu);
    return out;
}

/* ------------------------------------------------------------------------ */
/* engine, workers, listeners, connections                                   */

struct engine;
struct worker;
struct conn;

typedef struct { int tag; } handle;

typedef struct listen_handle {
    int tag; /* H_LISTEN */
    struct listener *l;
    int fd;
    int registered;
} listen_handle;

typedef struct listener {
    int id;
    int kind;
    struct sockaddr_storage target;
    socklen_t target_len;
    lconf *cur; /* guarded by engine->mu */
    uint64_t epoch;
    /* counters, guarded by engine->mu */
    int64_t plain_active, plain_total, tls_active, tls_total, plain_since_mode;
    int64_t last_plain_ns;
    int64_t bytes_ab, bytes_ba; /* atomics */
    listen_handle lh[MAX_WORKERS];
    int nfds;
} listener;

typedef struct buf {
    struct buf *next;
    size_t off, len;
    unsigned char data[BUFCAP];
} buf;

typedef struct side {
    int tag; /* H_SIDE */
    struct conn *c;
    int fd;
    SSL *ssl;
    struct buf *out;  /* TLS: records OpenSSL wrote, not yet sent (see out_write) */
    int shut_pending; /* TLS: FIN once `out` is sent (after close_notify) */
    int rd_eof;
    int wr_shut;
} side;

typedef struct conn {
    side a; /* accepted */
    side b; /* dialled */
    struct worker *w;
    listener *l;
    lconf *lc;
    uint64_t id;
    int state;
    int tls;            /* the TLS side: 0 none, 1 a, 2 b */
    int pending;        /* counted in engine->pending */
    int active;         /* 0, or 1 plaintext / 2 tls: counted as active */
    unsigned char key[32];
    char peer[64];
    buf *ab, *ba;
    /* timer list */
    int tlist;
    int64_t deadline;
    struct conn *tprev, *tnext;
    /* the worker's list of connections (and of waiting / dead ones) */
    struct conn *prev, *next;
    struct conn *wnext; /* waiting for a verdict, or the graveyard */
    int waiting;
} conn;

typedef struct cmd {
    int type;
    uint64_t conn_id;
    int allowed;
    char *reason, *detail, *peer_id;
    struct cmd *next;
} cmd;

enum { C_RESOLVE = 1, C_UNLISTEN, C_ABORT_ALL, C_STOP };

typedef struct worker {
    struct engine *e;
    int index;
    pthread_t thread;
    int started;
    int ep;
    handle wake_h;
    int wake_fd;
    pthread_mutex_t mu; /* cmds */
    cmd *cmds, *cmds_tail;
    conn *conns;
    conn *waiting;
    conn *grave;
    conn *thead[T_COUNT], *ttail[T_COUNT];
    buf *pool;
    int pooled;
    int nconns; /* atomic */
    uint64_t next_id;
    int stop;
} worker;

typedef struct event {
    int type;
    int listener;
    uint64_t conn_id;
    uint64_t gen;
    char *reason, *detail, *peer, *peer_id;
    unsigned char *leaf;
    int leaf_len;
    int nchain;
    unsigned char **chain;
    int *chain_len;
    struct event *next;
} event;

typedef struct engine {
    PyObject_HEAD
    pthread_mutex_t mu;      /* listeners, their counters, the event queue */
    pthread_cond_t cv;       /* synchronous commands */
    int acks;
    int notify_fd;
    int nworkers;
    worker workers[MAX_WORKERS];
    listener **listeners;
    int nlisteners;
    int64_t timeouts[T_COUNT]; /* ms */
    int max_pending;
    int pending; /* atomic */
    event *events, *events_tail;
    int closed;
} engine;

static void engine_notify(engine *e) {
    uint64_t one = 1;
    ssize_t r = write(e->notify_fd, &one, sizeof one);
    (void)r;
}

static void push_event(engine *e, event *ev) {
    pthread_mutex_lock(&e->mu);
    if (e->events_tail) e->events_tail->next = ev;
    else e->events = ev;
    e->events_tail = ev;
    pthread_mutex_unlock(&e->mu);
    engine_notify(e);
}

static void event_free(event *ev) {
    free(ev->reason);
    free(ev->detail);
    free(ev->peer);
    free(ev->peer_id);
    free(ev->leaf);
    for (int i = 0; i < ev->nchain; i++) free(ev->chain[i]);
    free(ev->chain);
    free(ev->chain_len);
    free(ev);
}

static void deny(conn *c, const char *reason, const char *detail, const char *peer_id) {
    event *ev = calloc(1, sizeof *ev);
    if (!ev) return;
    ev->type = EV_DENY;
    ev->listener = c->l->id;
    ev->conn_id = c->id;
    ev->gen = c->lc ? c->lc->gen : 0;
    ev->reason = xstrdup(reason);
    ev->detail = xstrdup(detail);
    ev->peer = xstrdup(c->peer);
    ev->peer_id = xstrdup(peer_id);
    push_event(c->w->e, ev);
}

static void upstream_failed(conn *c, const char *detail) {
    event *ev = calloc(1, sizeof *ev);
    if (!ev) return;
    ev->type = EV_UPSTREAM;
    ev->listener = c->l->id;
    ev->conn_id = c->id;
    ev->detail = xstrdup(detail);
    ev->peer = xstrdup(c->peer);
    push_event(c->w->e, ev);
}

/* -- buffers -------------------------------------------------------------- */

static buf *pool_get(worker *w) {
    buf *b = w->pool;
    if (b) {
        w->pool = b->next;
        w->pooled--;
    } else {
        b = malloc(sizeof *b);
        if (!b) return NULL;
    }
    b->next = NULL;
    b->off = b->len = 0;
    return b;
}

static void pool_put(worker *w, buf *b) {
    if (!b) return;
    if (w->pooled >= POOL_MAX) {
        free(b);
        return;
    }
    b->next = w->pool;
    w->pool = b;
    w->pooled++;
}

/* -- timers: one FIFO list per kind (same timeout, so sorted) -------------- */

static void timer_del(conn *c) {
    if (c->tlist == T_NONE) return;
    worker *w = c->w;
    int k = c->tlist;
    if (c->tprev) c->tprev->tnext = c->tnext;
    else w->thead[k] = c->tnext;
    if (c->tnext) c->tnext->tprev = c->tprev;
    else w->ttail[k] = c->tprev;
    c->tprev = c->tnext = NULL;
    c->tlist = T_NONE;
}

static void timer_add(conn *c, int k) {
    worker *w = c->w;
    timer_del(c);
    c->tlist = k;
    c->deadline = mono_ms() + w->e->timeouts[k];
    c->tnext = NULL;
    c->tprev = w->ttail[k];
    if (w->ttail[k]) w->ttail[k]->tnext = c;
    else w->thead[k] = c;
    w->ttail[k] = c;
}

/* -- connection lifetime --------------------------------------------------- */

static void set_nodelay(int fd) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static void side_close(side *s, int abort) {
    if (s->ssl) {
        SSL_free(s->ssl);
        s->ssl = NULL;
    }
    if (s->out) {
        pool_put(s->c->w, s->out);
        s->out = NULL;
    }
    if (s->fd >= 0) {
        if (abort) {
            struct linger lg = {1, 0};
            setsockopt(s->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        }
        close(s->fd);
        s->fd = -1;
    }
}

static void waiting_del(conn *c) {
    if (!c->waiting) return;
    conn **pp = &c->w->waiting;
    while (*pp && *pp != c) pp = &(*pp)->wnext;
    if (*pp) *pp = c->wnext;
    c->wnext = NULL;
    c->waiting = 0;
}

static void unpend(conn *c) {
    if (c->pending) {
        __atomic_sub_fetch(&c->w->e->pending, 1, __ATOMIC_RELAXED);
        c->pending = 0;
    }
}

static void conn_finish(conn *c, int abort) {
    if (c->state == S_DEAD) return;
    worker *w = c->w;
    engine *e = w->e;
    unpend(c);
    if (c->active) {
        pthread_mutex_lock(&e->mu);
        if (c->active == 2) c->l->tls_active--;
        else c->l->plain_active--;
        pthread_mutex_unlock(&e->mu);
        c->active = 0;
    }
    timer_del(c);
    waiting_del(c);
    side_close(&c->a, abort);
    side_close(&c->b, abort);
    pool_put(w, c->ab);
    pool_put(w, c->ba);
    c->ab = c->ba = NULL;
    lconf_unref(c->lc);
    c->lc = NULL;
    c->state = S_DEAD;
    if (c->prev) c->prev->next = c->next;
    else w->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    c->prev = c->next = NULL;
    c->wnext = w->grave;
    w->grave = c;
    __atomic_sub_fetch(&w->nconns, 1, __ATOMIC_RELAXED);
}

static int ep_add(worker *w, side *s) {
    struct epoll_event ev;
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
    ev.data.ptr = s;
    return epoll_ctl(w->ep, EPOLL_CTL_ADD, s->fd, &ev);
}

static void format_peer(const struct sockaddr_storage *ss, char *out, size_t n) {
    char host[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &s4->sin_addr, host, sizeof host);
        port = ntohs(s4->sin_port);
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &s6->sin6_addr, host, sizeof host);
        port = ntohs(s6->sin6_port);
    }
    snprintf(out, n, "%s:%d", host, port);
}

/* -- TLS ------------------------------------------------------------------- */

static void tls_error_detail(char *out, size_t n, int sslerr) {
    unsigned long err = ERR_peek_last_error();
    if (err != 0) {
        const char *r = ERR_reason_error_string(err);
        snprintf(out, n, "tls handshake failed: %s", r ? r : "unknown error");
    } else if (sslerr == SSL_ERROR_SYSCALL || sslerr == SSL_ERROR_ZERO_RETURN) {
        snprintf(out, n, "the peer closed the connection during the handshake");
    } else {
        snprintf(out, n, "tls handshake failed");
    }
    ERR_clear_error();
}

static int64_t asn1_time_s(const ASN1_TIME *t) {
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    if (!t || ASN1_TIME_to_tm(t, &tm) != 1) return 0;
    return (int64_t)timegm(&tm);
}

static void admit(conn *c);
static void connect_target(conn *c);
static void pump(conn *c);

/*
 * The write side of a TLS socket: OpenSSL writes its records into a pooled
 * buffer of the connection, and side_flush sends them with one send() for up
 * to 64 KiB of records instead of one write() per 16 KiB record.
 */
static BIO_METHOD *out_method;

static int out_write(BIO *b, const char *data, int len) {
    side *s = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (len <= 0) return 0;
    if (!s->out && !(s->out = pool_get(s->c->w))) return -1;
    buf *o = s->out;
    if (o->off == o->len) o->off = o->len = 0;
    if (o->len == BUFCAP && o->off > 0) {
        memmove(o->data, o->data + o->off, o->len - o->off);
        o->len -= o->off;
        o->off = 0;
    }
    size_t room = BUFCAP - o->len;
    if (room == 0) {
        BIO_set_retry_write(b); /* full: SSL_write says WANT_WRITE, side_flush makes room */
        return -1;
    }
    size_t n = (size_t)len < room ? (size_t)len : room;
    memcpy(o->data + o->len, data, n);
    o->len += n;
    return (int)n;
}

static long out_ctrl(BIO *b, int cmd, long num, void *ptr) {
    side *s = BIO_get_data(b);
    switch (cmd) {
    case BIO_CTRL_FLUSH:
        return 1; /* side_flush sends, after every OpenSSL call */
    case BIO_CTRL_WPENDING:
    case BIO_CTRL_PENDING:
        return s && s->out ? (long)(s->out->len - s->out->off) : 0;
    default:
        return 0;
    }
}

static int out_create(BIO *b) {
    BIO_set_init(b, 1);
    return 1;
}

/* send what OpenSSL wrote: 1 all sent, 0 the socket is full (EPOLLOUT follows), -1 broken */
static int side_flush(side *s) {
    buf *o = s->out;
    while (o && o->len > o->off) {
        ssize_t r = send(s->fd, o->data + o->off, o->len - o->off, MSG_NOSIGNAL);
        if (r < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return 0;
            return -1;
        }
        o->off += (size_t)r;
    }
    if (o) {
        pool_put(s->c->w, o);
        s->out = NULL;
    }
    if (s->shut_pending) {
        s->shut_pending = 0;
        shutdown(s->fd, SHUT_WR);
    }
    return 1;
}

/* the verdict for the peer is known: go on, or refuse */
static void verdict(conn *c, int allowed) {
    if (!allowed) {
        conn_finish(c, 1);
        return;
    }
    timer_del(c);
    if (c->l->kind == KIND_INBOUND) {
        unpend(c);
        connect_target(c);
    } else {
        admit(c);
    }
}

static void handshake_done(conn *c) {
    side *s = c->tls == 1 ? &c->a : &c->b;
    int reused = SSL_session_reused(s->ssl);
    X509 *peer = SSL_get0_peer_certificate(s->ssl);
    if (peer == NULL) {
        deny(c, "no_certificate", "the peer presented no certificate", NULL);
        conn_finish(c, 1);
        return;
    }
    unsigned int klen = 0;
    if (!X509_digest(peer, EVP_sha256(), c->key, &klen) || klen != 32) {
        deny(c, "bad_certificate", "the peer certificate cannot be parsed", NULL);
        conn_finish(c, 1);
        return;
    }
    chainstore *cs = chainstore_of(s->ssl);
    STACK_OF(X509) *held = NULL; /* our reference, for a resumed session */
    STACK_OF(X509) *chain;
    if (reused) {
        held = cs ? chain_get(cs, c->key) : NULL;
        if (held == NULL) {
            deny(c, "resumed_session",
                 "a resumed tls session whose chain this context did not verify: refused", NULL);
            conn_finish(c, 1);
            return;
        }
        chain = held;
    } else {
        chain = SSL_get0_verified_chain(s->ssl);
        if (cs && chain) chain_put(cs, c->key, chain);
    }
    int allowed = 0;
    char *reason = NULL, *detail = NULL, *peer_id = NULL;
    if (cache_get(c->lc, c->key, real_ns() / 1000000000LL, &allowed, &reason, &detail,
                  &peer_id)) {
        if (!allowed) deny(c, reason, detail, peer_id);
        free(reason);
        free(detail);
        free(peer_id);
        if (held) sk_X509_pop_free(held, X509_free);
        verdict(c, allowed);
        return;
    }
    /* a leaf this generation has not seen: Python decides once */
    event *ev = calloc(1, sizeof *ev);
    if (!ev) {
        if (held) sk_X509_pop_free(held, X509_free);
        conn_finish(c, 1);
        return;
    }
    ev->type = EV_VERIFY;
    ev->listener = c->l->id;
    ev->conn_id = c->id;
    ev->gen = c->lc->gen;
    ev->peer = xstrdup(c->peer);
    unsigned char *p = NULL;
    ev->leaf_len = i2d_X509(peer, &p);
    ev->leaf = p;
    int n = chain ? sk_X509_num(chain) : 0;
    if (n > 0) {
        ev->chain = calloc((size_t)n, sizeof *ev->chain);
        ev->chain_len = calloc((size_t)n, sizeof *ev->chain_len);
        if (ev->chain && ev->chain_len) {
            for (int i = 0; i < n; i++) {
                unsigned char *q = NULL;
                ev->chain_len[i] = i2d_X509(sk_X509_value(chain, i), &q);
                ev->chain[i] = q;
                ev->nchain++;
            }
        }
    }
    if (held) sk_X509_pop_free(held, X509_free);
    c->state = S_VERDICT;
    c->wnext = c->w->waiting;
    c->w->waiting = c;
    c->waiting = 1;
    push_event(c->w->e, ev);
}

static void handshake_step(conn *c) {
    side *s = c->tls == 1 ? &c->a : &c->b;
    int r, err, f;
    for (;;) {
        ERR_clear_error();
        r = SSL_do_handshake(s->ssl);
        err = r == 1 ? SSL_ERROR_NONE : SSL_get_error(s->ssl, r);
        f = side_flush(s); /* our flight (or alert) goes out now */
        if (err == SSL_ERROR_WANT_WRITE && f == 1) continue;
        break;
    }
    if (f < 0 && err != SSL_ERROR_SSL) {
        deny(c, "handshake_failed", "the peer closed the connection during the handshake", NULL);
        conn_finish(c, 1);
        return;
    }
    if (r == 1) {
        handshake_done(c);
        return;
    }
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) return;
    char detail[256];
    tls_error_detail(detail, sizeof detail, err);
    deny(c, "handshake_failed", detail, NULL);
    conn_finish(c, 1);
}

static void start_tls(conn *c, side *s, int server) {
    s->ssl = SSL_new(c->lc->ctx);
    BIO *rb = s->ssl ? BIO_new_socket(s->fd, BIO_NOCLOSE) : NULL;
    BIO *wb = rb ? BIO_new(out_method) : NULL;
    if (!wb) {
        BIO_free(rb);
        deny(c, "handshake_failed", "tls handshake failed: cannot start tls", NULL);
        conn_finish(c, 1);
        return;
    }
    BIO_set_data(wb, s);
    SSL_set_bio(s->ssl, rb, wb);
    if (server) SSL_set_accept_state(s->ssl);
    else SSL_set_connect_state(s->ssl);
    c->tls = (s == &c->a) ? 1 : 2;
    c->state = S_HANDSHAKE;
    timer_add(c, T_HANDSHAKE);
    handshake_step(c);
}

/* -- admission and the pump ------------------------------------------------ */

static void admit(conn *c) {
    engine *e = c->w->e;
    listener *l = c->l;
    int tls = c->tls != 0;
    pthread_mutex_lock(&e->mu);
    if (tls) {
        l->tls_active++;
        l->tls_total++;
    } else {
        l->plain_active++;
        l->plain_total++;
        if (l->kind == KIND_INBOUND) {
            l->last_plain_ns = real_ns();
            if (c->lc->epoch == l->epoch) l->plain_since_mode++;
        }
    }
    pthread_mutex_unlock(&e->mu);
    c->active = tls ? 2 : 1;
    c->state = S_PUMP;
    timer_del(c);
    pump(c);
}

static void connect_target(conn *c) {
    listener *l = c->l;
    int fd = socket(l->target.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        upstream_failed(c, strerror(errno));
        conn_finish(c, 1);
        return;
    }
    set_nodelay(fd);
    c->b.fd = fd;
    int r = connect(fd, (struct sockaddr *)&l->target, l->target_len);
    if (r < 0 && errno != EINPROGRESS) {
        upstream_failed(c, strerror(errno));
        conn_finish(c, 1);
        return;
    }
    c->state = S_CONNECT;
    timer_add(c, T_CONNECT);
    if (ep_add(c->w, &c->b) < 0) {
        upstream_failed(c, strerror(errno));
        conn_finish(c, 1);
    }
}

static void connected(conn *c) {
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(c->b.fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) err = errno;
    if (err == EINPROGRESS) return;
    if (err != 0) {
        upstream_failed(c, strerror(err));
        conn_finish(c, 1);
        return;
    }
    /* still in progress? (a spurious wake-up) */
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (getpeername(c->b.fd, (struct sockaddr *)&ss, &sl) < 0) {
        if (errno == ENOTCONN) return;
        upstream_failed(c, strerror(errno));
        conn_finish(c, 1);
        return;
    }
    timer_del(c);
    if (c->l->kind == KIND_INBOUND) {
        admit(c);
    } else if (c->lc->mtls) {
        start_tls(c, &c->b, 0);
    } else {
        admit(c);
    }
}

static ssize_t side_read(side *s, unsigned char *p, size_t n) {
    if (s->ssl) {
        size_t got = 0;
        while (got < n) {
            ERR_clear_error();
            int r = SSL_read(s->ssl, p + got, (int)(n - got));
            if (r > 0) {
                got += (size_t)r;
                continue;
            }
            int err = SSL_get_error(s->ssl, r);
            if (got > 0) break; /* the next call sees it again */
            if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) return AGAIN;
            if (err == SSL_ERROR_ZERO_RETURN) return 0; /* close_notify */
            if (err == SSL_ERROR_SYSCALL && ERR_peek_error() == 0) return 0; /* FIN, no close_notify */
            if (err == SSL_ERROR_SSL &&
                ERR_GET_REASON(ERR_peek_error()) == SSL_R_UNEXPECTED_EOF_WHILE_READING)
                return 0;
            ERR_clear_error();
            return -1;
        }
        return (ssize_t)got;
    }
    ssize_t r = recv(s->fd, p, n, 0);
    if (r >= 0) return r;
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return AGAIN;
    return -1;
}

#define TLS_CHUNK BUFSZ /* plaintext per SSL_write: a whole read, its records fit one buffer */

static ssize_t side_write(side *s, const unsigned char *p, size_t n) {
    if (s->ssl) {
        for (;;) {
            int f = side_flush(s);
            if (f < 0) return -1;
            if (f == 0) return AGAIN;
            ERR_clear_error();
            int r = SSL_write(s->ssl, p, (int)(n > TLS_CHUNK ? TLS_CHUNK : n));
            if (r > 0) return side_flush(s) < 0 ? -1 : r;
            int err = SSL_get_error(s->ssl, r);
            if (err == SSL_ERROR_WANT_WRITE) continue; /* the buffer was full: flush, retry */
            if (err == SSL_ERROR_WANT_READ) return AGAIN;
            ERR_clear_error();
            return -1;
        }
    }
    ssize_t r = send(s->fd, p, n, MSG_NOSIGNAL);
    if (r >= 0) return r;
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return AGAIN;
    return -1;
}

static void side_shut(side *s) {
    if (s->wr_shut) return;
    s->wr_shut = 1;
    if (s->ssl) {
        ERR_clear_error();
        SSL_shutdown(s->ssl); /* close_notify; reading on stays possible */
        ERR_clear_error();
        s->shut_pending = 1; /* FIN after the close_notify is out */
        side_flush(s);
        return;
    }
    shutdown(s->fd, SHUT_WR);
}

/* move bytes src -> dst until blocked: 0 blocked, 1 this direction is done, -1 broken */
static int flow(conn *c, side *src, side *dst, buf **bp, int64_t *counter) {
    for (;;) {
        buf *b = *bp;
        if (b && b->len > b->off) {
            ssize_t n = side_write(dst, b->data + b->off, b->len - b->off);
            if (n == AGAIN) return 0;
            if (n < 0) return -1;
            b->off += (size_t)n;
            continue;
        }
        if (b) {
            pool_put(c->w, b);
            *bp = NULL;
        }
        if (src->rd_eof) {
            side_shut(dst);
            return dst->shut_pending ? 0 : 1;
        }
        b = pool_get(c->w);
        if (!b) return -1;
        ssize_t n = side_read(src, b->data, BUFSZ);
        if (n > 0) {
            b->len = (size_t)n;
            *bp = b;
            __atomic_add_fetch(counter, n, __ATOMIC_RELAXED);
            continue;
        }
        pool_put(c->w, b);
        if (n == 0) {
            src->rd_eof = 1;
            continue;
        }
        if (n == AGAIN) return 0;
        return -1;
    }
}

static void pump(conn *c) {
    side *t = c->tls == 1 ? &c->a : c->tls == 2 ? &c->b : NULL;
    if (t && (t->out || t->shut_pending) && side_flush(t) < 0) {
        conn_finish(c, 1);
        return;
    }
    int r1 = flow(c, &c->a, &c->b, &c->ab, &c->l->bytes_ab);
    if (r1 < 0) {
        conn_finish(c, 1);
        return;
    }
    int r2 = flow(c, &c->b, &c->a, &c->ba, &c->l->bytes_ba);
    if (r2 < 0) {
        conn_finish(c, 1);
        return;
    }
    if (r1 == 1 && r2 == 1) conn_finish(c, 0);
}

/* -- sniffing -------------------------------------------------------------- */

static void sniff_verdict(conn *c, int v, size_t seen, int timed_out, int closed) {
    int mode = c->lc->mode;
    if (v == SN_TLS) {
        start_tls(c, &c->a, 1);
        return;
    }
    if (v == SN_MORE && closed) { /* the peer left before the bytes told anything */
        conn_finish(c, 0);
        return;
    }
    if (v == SN_MORE && timed_out && seen > 0) {
        deny(c, "sniff_stalled", "a partial tls record header, then nothing", NULL);
        conn_finish(c, 1);
        return;
    }
    /* plaintext, or silent (a server-first protocol) */
    if (mode == MODE_STRICT) {
        deny(c, v == SN_PLAINTEXT ? "plaintext_in_strict" : "silent_in_strict",
             "the listener is STRICT: only mTLS is accepted", NULL);
        conn_finish(c, 1);
        return;
    }
    unpend(c);
    timer_del(c);
    if (!c->lc->plaintext_allowed) {
        deny(c, "unauthorized", c->lc->plaintext_detail, NULL);
        conn_finish(c, 1);
        return;
    }
    connect_target(c);
}

static void sniff_step(conn *c, int rdhup, int timed_out) {
    unsigned char p[3];
    ssize_t n = recv(c->a.fd, p, sizeof p, MSG_PEEK);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
            if (timed_out) sniff_verdict(c, SN_MORE, 0, 1, 0);
            return;
        }
        conn_finish(c, 1);
        return;
    }
    if (n == 0) {
        sniff_verdict(c, SN_MORE, 0, 0, 1);
        return;
    }
    int v = classify(p, (size_t)n);
    if (v != SN_MORE) {
        sniff_verdict(c, v, (size_t)n, 0, 0);
        return;
    }
    if (rdhup) {
        sniff_verdict(c, SN_MORE, (size_t)n, 0, 1);
        return;
    }
    if (timed_out) sniff_verdict(c, SN_MORE, (size_t)n, 1, 0);
}

/* -- accepting ------------------------------------------------------------- */

static void accept_one(worker *w, listener *l, int fd, struct sockaddr_storage *ss) {
    engine *e = w->e;
    conn *c = calloc(1, sizeof *c);
    if (!c) {
        close(fd);
        return;
    }
    c->a.tag = c->b.tag = H_SIDE;
    c->a.c = c->b.c = c;
    c->a.fd = fd;
    c->b.fd = -1;
    c->w = w;
    c->l = l;
    c->id = (++w->next_id << 8) | (uint64_t)w->index;
    format_peer(ss, c->peer, sizeof c->peer);
    pthread_mutex_lock(&e->mu);
    c->lc = l->cur;
    if (c->lc) lconf_ref(c->lc);
    pthread_mutex_unlock(&e->mu);
    c->next = w->conns;
    if (w->conns) w->conns->prev = c;
    w->conns = c;
    __atomic_add_fetch(&w->nconns, 1, __ATOMIC_RELAXED);
    set_nodelay(fd);
    if (!c->lc) {
        deny(c, "no_identity", "the proxy has no svid", NULL);
        conn_finish(c, 1);
        return;
    }
    if (ep_add(w, &c->a) < 0) {
        conn_finish(c, 1);
        return;
    }
    if (l->kind == KIND_OUTBOUND) {
        connect_target(c);
        return;
    }
    if (c->lc->mode == MODE_DISABLE) {
        if (!c->lc->plaintext_allowed) {
            deny(c, "unauthorized", c->lc->plaintext_detail, NULL);
            conn_finish(c, 1);
            return;
        }
        connect_target(c);
        return;
    }
    int pending = __atomic_load_n(&e->pending, __ATOMIC_RELAXED);
    if (pending >= e->max_pending) {
        char detail[96];
        snprintf(detail, sizeof detail, "%d connections are already being sniffed", pending);
        deny(c, "sniff_overload", detail, NULL);
        conn_finish(c, 1);
        return;
    }
    __atomic_add_fetch(&e->pending, 1, __ATOMIC_RELAXED);
    c->pending = 1;
    c->state = S_SNIFF;
    timer_add(c, T_SNIFF);
    sniff_step(c, 0, 0);
}

static void on_listen(worker *w, listen_handle *lh) {
    for (int i = 0; i < 64; i++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        int fd = accept4(lh->fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) return; /* EAGAIN, or a transient error: the next edge brings more */
        accept_one(w, lh->l, fd, &ss);
    }
    /* more may be queued: stay level-triggered for the listener (see registration) */
}

static void on_side(side *s, uint32_t evs) {
    conn *c = s->c;
    switch (c->state) {
    case S_SNIFF:
        sniff_step(c, (evs & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) != 0, 0);
        break;
    case S_HANDSHAKE:
        if ((c->tls == 1 && s == &c->a) || (c->tls == 2 && s == &c->b)) handshake_step(c);
        break;
    case S_CONNECT:
        if (s == &c->b) connected(c);
        break;
    case S_PUMP:
        pump(c);
        break;
    default:
        break; /* S_VERDICT: bytes wait in the kernel */
    }
}

static void on_timers(worker *w) {
    int64_t now = mono_ms();
    for (int k = T_SNIFF; k < T_COUNT; k++) {
        while (w->thead[k] && w->thead[k]->deadline <= now) {
            conn *c = w->thead[k];
            timer_del(c);
            if (k == T_SNIFF) {
                sniff_step(c, 0, 1);
                if (c->state == S_SNIFF) conn_finish(c, 1);
            } else if (k == T_HANDSHAKE) {
                deny(c, "handshake_failed", "the tls handshake timed out", NULL);
                conn_finish(c, 1);
            } else {
                upstream_failed(c, "timed out");
                conn_finish(c, 1);
            }
        }
    }
}

static int next_timeout(worker *w) {
    int64_t best = -1;
    for (int k = T_SNIFF; k < T_COUNT; k++)
        if (w->thead[k] && (best < 0 || w->thead[k]->deadline < best)) best = w->thead[k]->deadline;
    if (best < 0) return -1;
    int64_t d = best - mono_ms();
    return d < 0 ? 0 : (d > 60000 ? 60000 : (int)d);
}

static void cmd_free(cmd *m) {
    free(m->reason);
    free(m->detail);
    free(m->peer_id);
    free(m);
}

static void ack(engine *e) {
    pthread_mutex_lock(&e->mu);
    e->acks++;
    pthread_cond_broadcast(&e->cv);
    pthread_mutex_unlock(&e->mu);
}

static void on_cmds(worker *w) {
    uint64_t v;
    ssize_t r = read(w->wake_fd, &v, sizeof v);
    (void)r;
    pthread_mutex_lock(&w->mu);
    cmd *m = w->cmds;
    w->cmds = w->cmds_tail = NULL;
    pthread_mutex_unlock(&w->mu);
    while (m) {
        cmd *next = m->next;
        if (m->type == C_RESOLVE) {
            conn *c = w->waiting;
            while (c && c->id != m->conn_id) c = c->wnext;
            if (c && c->state == S_VERDICT) {
                waiting_del(c);
                side *s = c->tls == 1 ? &c->a : &c->b;
                X509 *peer = SSL_get0_peer_certificate(s->ssl);
                int64_t nb = peer ? asn1_time_s(X509_get0_notBefore(peer)) : 0;
                int64_t na = peer ? asn1_time_s(X509_get0_notAfter(peer)) : 0;
                cache_put(c->lc, c->key, m->allowed, nb, na, m->reason, m->detail, m->peer_id);
                verdict(c, m->allowed);
                if (c->state == S_PUMP) pump(c); /* bytes that arrived meanwhile */
            }
        } else if (m->type == C_UNLISTEN) {
            engine *e = w->e;
            pthread_mutex_lock(&e->mu);
            for (int i = 0; i < e->nlisteners; i++) {
                listen_handle *lh = &e->listeners[i]->lh[w->index];
                if (lh->registered) {
                    epoll_ctl(w->ep, EPOLL_CTL_DEL, lh->fd, NULL);
                    lh->registered = 0;
                }
            }
            pthread_mutex_unlock(&e->mu);
            ack(e);
        } else if (m->type == C_ABORT_ALL) {
            while (w->conns) conn_finish(w->conns, 1);
            ack(w->e);
        } else if (m->type == C_STOP) {
            w->stop = 1;
        }
        cmd_free(m);
        m = next;
    }
}

static void bury(worker *w) {
    while (w->grave) {
        conn *c = w->grave;
        w->grave = c->wnext;
        free(c);
    }
}

static void *worker_main(void *arg) {
    worker *w = arg;
    struct epoll_event evs[256];
    while (!w->stop) {
        int n = epoll_wait(w->ep, evs, 256, next_timeout(w));
        if (n < 0 && errno != EINTR) break;
        for (int i = 0; i < n; i++) {
            handle *h = evs[i].data.ptr;
            if (h->tag == H_LISTEN) on_listen(w, (listen_handle *)h);
            else if (h->tag == H_WAKE) on_cmds(w);
            else if (h->tag == H_SIDE && ((side *)h)->c->state != S_DEAD)
                on_side((side *)h, evs[i].events);
        }
        on_timers(w);
        bury(w);
    }
    while (w->conns) conn_finish(w->conns, 1);
    bury(w);
    return NULL;
}

static void send_cmd(worker *w, cmd *m) {
    pthread_mutex_lock(&w->mu);
    if (w->cmds_tail) w->cmds_tail->next = m;
    else w->cmds = m;
    w->cmds_tail = m;
    pthread_mutex_unlock(&w->mu);
    uint64_t one = 1;
    ssize_t r = write(w->wake_fd, &one, sizeof one);
    (void)r;
}

/* send one command to every worker and wait until each has acknowledged it */
static int broadcast_sync(engine *e, int type) {
    pthread_mutex_lock(&e->mu);
    int target = e->acks + e->nworkers;
    pthread_mutex_unlock(&e->mu);
    for (int i = 0; i < e->nworkers; i++) {
        cmd *m = calloc(1, sizeof *m);
        if (!m) return -1;
        m->type = type;
        send_cmd(&e->workers[i], m);
    }
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&e->mu);
    while (e->acks < target) pthread_cond_wait(&e->cv, &e->mu);
    pthread_mutex_unlock(&e->mu);
    Py_END_ALLOW_THREADS
    return 0;
}

/* ------------------------------------------------------------------------ */
/* TlsContext                                                                */

typedef struct {
    PyObject_HEAD
    SSL_CTX *ctx;
} TlsContextObject;

static PyTypeObject TlsContextType;

static PyObject *ssl_error(const char *what) {
    unsigned long err = ERR_peek_last_error();
    const char *reason = err ? ERR_reason_error_string(err) : NULL;
    PyErr_Format(PyExc_ValueError, "%s: %s", what, reason ? reason : "unknown error");
    ERR_clear_error();
    return NULL;
}

static int tlsctx_init(TlsContextObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"chain_pem", "key_pem", "bundle_pem", "server", NULL};
    Py_buffer chain, key, bundle;
    int server = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*y*y*p", kwlist, &chain, &key, &bundle,
                                     &server))
        return -1;
    int rc = -1;
    SSL_CTX *ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
    BIO *bio = NULL;
    X509 *x = NULL;
    EVP_PKEY *pkey = NULL;
    if (!ctx) {
        ssl_error("cannot create an SSL_CTX");
        goto out;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    /* servers: a session cache of this context alone (TLS 1.2 session IDs, TLS 1.3 stateful
       tickets; see chainstore); clients offer no session */
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_TICKET);
    SSL_CTX_set_num_tickets(ctx, server ? 1 : 0);
    SSL_CTX_set_session_cache_mode(ctx, server ? SSL_SESS_CACHE_SERVER : SSL_SESS_CACHE_OFF);
    SSL_CTX_sess_set_cache_size(ctx, CACHE_MAX);
    SSL_CTX_set_timeout(ctx, 600);
    if (server) {
        chainstore *cs = calloc(1, sizeof *cs);
        if (!cs) {
            PyErr_NoMemory();
            goto out;
        }
        pthread_mutex_init(&cs->mu, NULL);
        SSL_CTX_set_ex_data(ctx, chain_index, cs);
        /* a random session-ID context: a session of one context never resumes on another */
        unsigned char sid[16];
        if (RAND_bytes(sid, sizeof sid) != 1 || !SSL_CTX_set_session_id_context(ctx, sid, sizeof sid)) {
            ssl_error("cannot set the session id context");
            goto out;
        }
    }
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_read_ahead(ctx, 1); /* a record header and its body in one read() */
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    if (!SSL_CTX_set_cipher_list(ctx, "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL") ||
        !SSL_CTX_set1_groups_list(ctx, "X25519:P-256:P-384")) {
        ssl_error("cannot set the tls parameters");
        goto out;
    }
    X509_STORE *store = SSL_CTX_get_cert_store(ctx);
    X509_STORE_set_flags(store, X509_V_FLAG_PARTIAL_CHAIN);
    /* trust anchors */
    bio = BIO_new_mem_buf(bundle.buf, (int)bundle.len);
    while (bio && (x = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
        X509_STORE_add_cert(store, x);
        X509_free(x);
        x = NULL;
    }
    ERR_clear_error();
    BIO_free(bio);
    /* the SVID chain, leaf first */
    bio = BIO_new_mem_buf(chain.buf, (int)chain.len);
    x = bio ? PEM_read_bio_X509(bio, NULL, NULL, NULL) : NULL;
    if (!x || SSL_CTX_use_certificate(ctx, x) != 1) {
        ssl_error("the svid is not a PEM certificate chain");
        goto out;
    }
    X509_free(x);
    x = NULL;
    while ((x = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
        if (SSL_CTX_add0_chain_cert(ctx, x) != 1) {
            ssl_error("cannot add an intermediate certificate");
            goto out;
        }
        x = NULL; /* owned by the context */
    }
    ERR_clear_error();
    BIO_free(bio);
    /* the private key: from memory, never a file */
    bio = BIO_new_mem_buf(key.buf, (int)key.len);
    pkey = bio ? PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL) : NULL;
    if (!pkey || SSL_CTX_use_PrivateKey(ctx, pkey) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
        PyErr_SetString(PyExc_ValueError, "the svid private key is unusable or does not match");
        ERR_clear_error();
        goto out;
    }
    self->ctx = ctx;
    ctx = NULL;
    rc = 0;
out:
    if (x) X509_free(x);
    if (pkey) EVP_PKEY_free(pkey);
    if (bio) BIO_free(bio);
    if (ctx) SSL_CTX_free(ctx);
    PyBuffer_Release(&chain);
    PyBuffer_Release(&key);
    PyBuffer_Release(&bundle);
    return rc;
}

static void tlsctx_dealloc(TlsContextObject *self) {
    if (self->ctx) SSL_CTX_free(self->ctx);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject TlsContextType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "trustd.dataplane._native.TlsContext",
    .tp_basicsize = sizeof(TlsContextObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "An SSL_CTX built from a PEM chain, key and trust bundle held in memory.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)tlsctx_init,
    .tp_dealloc = (destructor)tlsctx_dealloc,
};

/* ------------------------------------------------------------------------ */
/* Engine                                                                    */

static PyTypeObject EngineType;

static void engine_shutdown(engine *e) {
    if (e->closed) return;
    e->closed = 1;
    for (int i = 0; i < e->nworkers; i++) {
        worker *w = &e->workers[i];
        if (w->started) {
            cmd *m = calloc(1, sizeof *m);
            if (m) {
                m->type = C_STOP;
                send_cmd(w, m);
            }
        }
    }
    Py_BEGIN_ALLOW_THREADS
    for (int i = 0; i < e->nworkers; i++)
        if (e->workers[i].started) pthread_join(e->workers[i].thread, NULL);
    Py_END_ALLOW_THREADS
}

static int engine_init(engine *e, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"workers", "sniff_timeout_ms", "handshake_timeout_ms",
                             "connect_timeout_ms", "max_pending", NULL};
    int workers = 1, max_pending = 1024;
    long long st = 1000, ht = 10000, ct = 5000;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|iLLLi", kwlist, &workers, &st, &ht, &ct,
                                     &max_pending))
        return -1;
    if (workers < 1 || workers > MAX_WORKERS) {
        PyErr_Format(PyExc_ValueError, "workers must be 1 to %d", MAX_WORKERS);
        return -1;
    }
    if (e->nworkers) {
        PyErr_SetString(PyExc_RuntimeError, "the engine is already initialised");
        return -1;
    }
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->cv, NULL);
    e->timeouts[T_SNIFF] = st;
    e->timeouts[T_HANDSHAKE] = ht;
    e->timeouts[T_CONNECT] = ct;
    e->max_pending = max_pending;
    e->notify_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (e->notify_fd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    for (int i = 0; i < workers; i++) e->workers[i].ep = e->workers[i].wake_fd = -1;
    e->nworkers = workers;
    for (int i = 0; i < workers; i++) {
        worker *w = &e->workers[i];
        w->e = e;
        w->index = i;
        pthread_mutex_init(&w->mu, NULL);
        w->ep = epoll_create1(EPOLL_CLOEXEC);
        w->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        w->wake_h.tag = H_WAKE;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &w->wake_h};
        if (w->ep < 0 || w->wake_fd < 0 || epoll_ctl(w->ep, EPOLL_CTL_ADD, w->wake_fd, &ev) < 0) {
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
    }
    for (int i = 0; i < workers; i++) {
        if (pthread_create(&e->workers[i].thread, NULL, worker_main, &e->workers[i]) != 0) {
            PyErr_SetString(PyExc_OSError, "cannot start a worker thread");
            return -1;
        }
        e->workers[i].started = 1;
    }
    return 0;
}

static void engine_dealloc(engine *e) {
    engine_shutdown(e);
    for (int i = 0; i < e->nworkers; i++) {
        worker *w = &e->workers[i];
        cmd *m = w->cmds;
        while (m) {
            cmd *n = m->next;
            cmd_free(m);
            m = n;
        }
        while (w->pool) {
            buf *b = w->pool;
            w->pool = b->next;
            free(b);
        }
        if (w->ep >= 0) close(w->ep);
        if (w->wake_fd >= 0) close(w->wake_fd);
        pthread_mutex_destroy(&w->mu);
    }
    for (int i = 0; i < e->nlisteners; i++) {
        lconf_unref(e->listeners[i]->cur);
        free(e->listeners[i]);
    }
    free(e->listeners);
    event *ev = e->events;
    while (ev) {
        event *n = ev->next;
        event_free(ev);
        ev = n;
    }
    if (e->nworkers) {
        close(e->notify_fd);
        pthread_mutex_destroy(&e->mu);
        pthread_cond_destroy(&e->cv);
    }
    Py_TYPE(e)->tp_free((PyObject *)e);
}

static PyObject *engine_fileno(engine *e, PyObject *Py_UNUSED(ignored)) {
    return PyLong_FromLong(e->notify_fd);
}

/* add_listener(kind, fds, target_ip, target_port) -> id */
static PyObject *engine_add_listener(engine *e, PyObject *args) {
    int kind, port;
    PyObject *fds;
    const char *ip;
    if (!PyArg_ParseTuple(args, "iO!si", &kind, &PyList_Type, &fds, &ip, &port)) return NULL;
    if (e->closed) {
        PyErr_SetString(PyExc_RuntimeError, "the engine is closed");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(fds);
    if (n != e->nworkers) {
        PyErr_SetString(PyExc_ValueError, "one listening socket per worker is needed");
        return NULL;
    }
    listener *l = calloc(1, sizeof *l);
    if (!l) return PyErr_NoMemory();
    l->kind = kind;
    struct sockaddr_in *s4 = (struct sockaddr_in *)&l->target;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&l->target;
    if (inet_pton(AF_INET, ip, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)port);
        l->target_len = sizeof *s4;
    } else if (inet_pton(AF_INET6, ip, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)port);
        l->target_len = sizeof *s6;
    } else {
        free(l);
        PyErr_Format(PyExc_ValueError, "not an IP address: %s", ip);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        long fd = PyLong_AsLong(PyList_GET_ITEM(fds, i));
        if (fd < 0 && PyErr_Occurred()) {
            free(l);
            return NULL;
        }
        l->lh[i].tag = H_LISTEN;
        l->lh[i].l = l;
        l->lh[i].fd = (int)fd;
    }
    l->nfds = (int)n;
    pthread_mutex_lock(&e->mu);
    listener **grown = realloc(e->listeners, sizeof *grown * (size_t)(e->nlisteners + 1));
    if (!grown) {
        pthread_mutex_unlock(&e->mu);
        free(l);
        return PyErr_NoMemory();
    }
    e->listeners = grown;
    l->id = e->nlisteners;
    e->listeners[e->nlisteners++] = l;
    pthread_mutex_unlock(&e->mu);
    /* listeners are level-triggered: a backlog left after 64 accepts wakes the loop again */
    for (int i = 0; i < l->nfds; i++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &l->lh[i]};
        if (epoll_ctl(e->workers[i].ep, EPOLL_CTL_ADD, l->lh[i].fd, &ev) < 0)
            return PyErr_SetFromErrno(PyExc_OSError);
        l->lh[i].registered = 1;
    }
    return PyLong_FromLong(l->id);
}

static listener *get_listener(engine *e, int id) {
    if (id < 0 || id >= e->nlisteners) {
        PyErr_SetString(PyExc_IndexError, "no such listener");
        return NULL;
    }
    return e->listeners[id];
}

/* configure(id, mode, mtls, plaintext_allowed, plaintext_detail, epoch, gen, ctx|None) */
static PyObject *engine_configure(engine *e, PyObject *args) {
    int id, mode, mtls, pallowed;
    const char *pdetail;
    unsigned long long epoch, gen;
    PyObject *ctxobj;
    if (!PyArg_ParseTuple(args, "iippsKKO", &id, &mode, &mtls, &pallowed, &pdetail, &epoch, &gen,
                          &ctxobj))
        return NULL;
    listener *l = get_listener(e, id);
    if (!l) return NULL;
    if (ctxobj != Py_None && !PyObject_TypeCheck(ctxobj, &TlsContextType)) {
        PyErr_SetString(PyExc_TypeError, "ctx must be a TlsContext or None");
        return NULL;
    }
    lconf *lc = calloc(1, sizeof *lc);
    if (!lc) return PyErr_NoMemory();
    lc->refs = 1;
    lc->mode = mode;
    lc->mtls = mtls;
    lc->plaintext_allowed = pallowed;
    lc->plaintext_detail = xstrdup(pdetail);
    lc->epoch = epoch;
    lc->gen = gen;
    pthread_mutex_init(&lc->mu, NULL);
    if (ctxobj != Py_None) {
        lc->ctx = ((TlsContextObject *)ctxobj)->ctx;
        SSL_CTX_up_ref(lc->ctx);
    }
    pthread_mutex_lock(&e->mu);
    lconf *old = l->cur;
    l->cur = lc;
    if (epoch != l->epoch) {
        l->epoch = epoch;
        l->plain_since_mode = 0;
    }
    pthread_mutex_unlock(&e->mu);
    lconf_unref(old);
    Py_RETURN_NONE;
}

/* resolve(conn_id, allowed, reason, detail, peer_id) */
static PyObject *engine_resolve(engine *e, PyObject *args) {
    unsigned long long cid;
    int allowed;
    const char *reason, *detail, *peer_id;
    if (!PyArg_ParseTuple(args, "Kpzzz", &cid, &allowed, &reason, &detail, &peer_id)) return NULL;
    int widx = (int)(cid & 0xff);
    if (widx >= e->nworkers || e->closed) Py_RETURN_NONE;
    cmd *m = calloc(1, sizeof *m);
    if (!m) return PyErr_NoMemory();
    m->type = C_RESOLVE;
    m->conn_id = cid;
    m->allowed = allowed;
    m->reason = xstrdup(reason);
    m->detail = xstrdup(detail);
    m->peer_id = xstrdup(peer_id);
    send_cmd(&e->workers[widx], m);
    Py_RETURN_NONE;
}

static PyObject *str_or_none(const char *s) {
    if (!s) Py_RETURN_NONE;
    return PyUnicode_DecodeUTF8(s, (Py_ssize_t)strlen(s), "replace");
}

static PyObject *engine_events(engine *e, PyObject *Py_UNUSED(ignored)) {
    uint64_t v;
    ssize_t r = read(e->notify_fd, &v, sizeof v);
    (void)r;
    pthread_mutex_lock(&e->mu);
    event *ev = e->events;
    e->events = e->events_tail = NULL;
    pthread_mutex_unlock(&e->mu);
    PyObject *out = PyList_New(0);
    while (ev) {
        event *next = ev->next;
        PyObject *item = NULL;
        if (out) {
            if (ev->type == EV_DENY) {
                item = Py_BuildValue("(siKKNNNN)", "deny", ev->listener,
                                     (unsigned long long)ev->conn_id,
                                     (unsigned long long)ev->gen, str_or_none(ev->reason),
                                     str_or_none(ev->detail), str_or_none(ev->peer),
                                     str_or_none(ev->peer_id));
            } else if (ev->type == EV_UPSTREAM) {
                item = Py_BuildValue("(siKNN)", "upstream", ev->listener,
                                     (unsigned long long)ev->conn_id, str_or_none(ev->detail),
                                     str_or_none(ev->peer));
            } else {
                PyObject *chain = PyTuple_New(ev->nchain);
                for (int i = 0; chain && i < ev->nchain; i++)
                    PyTuple_SET_ITEM(chain, i,
                                     PyBytes_FromStringAndSize((const char *)ev->chain[i],
                                                               ev->chain_len[i]));
                item = Py_BuildValue(
                    "(siKKy#NN)", "verify", ev->listener, (unsigned long long)ev->conn_id,
                    (unsigned long long)ev->gen, (const char *)ev->leaf,
                    (Py_ssize_t)(ev->leaf_len > 0 ? ev->leaf_len : 0), chain,
                    str_or_none(ev->peer));
            }
            if (!item || PyList_Append(out, item) < 0) Py_CLEAR(out);
            Py_XDECREF(item);
        }
        event_free(ev);
        ev = next;
    }
    return out;
}

static PyObject *engine_stats(engine *e, PyObject *args) {
    int id;
    if (!PyArg_ParseTuple(args, "i", &id)) return NULL;
    listener *l = get_listener(e, id);
    if (!l) return NULL;
    pthread_mutex_lock(&e->mu);
    long long v[6] = {l->plain_active, l->plain_total, l->tls_active,
                      l->tls_total,    l->plain_since_mode, l->last_plain_ns};
    pthread_mutex_unlock(&e->mu);
    long long ab = __atomic_load_n(&l->bytes_ab, __ATOMIC_RELAXED);
    long long ba = __atomic_load_n(&l->bytes_ba, __ATOMIC_RELAXED);
    return Py_BuildValue("{sLsLsLsLsLsLsLsL}", "plaintext_active", v[0], "plaintext_total", v[1],
                         "tls_active", v[2], "tls_total", v[3], "plaintext_since_mode", v[4],
                         "last_plaintext_ns", v[5], "bytes_ab", ab, "bytes_ba", ba);
}

static PyObject *engine_pending(engine *e, PyObject *Py_UNUSED(ignored)) {
    return PyLong_FromLong(__atomic_load_n(&e->pending, __ATOMIC_RELAXED));
}

static PyObject *engine_connections(engine *e, PyObject *Py_UNUSED(ignored)) {
    long n = 0;
    for (int i = 0; i < e->nworkers; i++)
        n += __atomic_load_n(&e->workers[i].nconns, __ATOMIC_RELAXED);
    return PyLong_FromLong(n);
}

static PyObject *engine_unlisten(engine *e, PyObject *Py_UNUSED(ignored)) {
    if (!e->closed && broadcast_sync(e, C_UNLISTEN) < 0) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *engine_abort_all(engine *e, PyObject *Py_UNUSED(ignored)) {
    if (!e->closed && broadcast_sync(e, C_ABORT_ALL) < 0) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *engine_close(engine *e, PyObject *Py_UNUSED(ignored)) {
    engine_shutdown(e);
    Py_RETURN_NONE;
}

static PyMethodDef engine_methods[] = {
    {"fileno", (PyCFunction)engine_fileno, METH_NOARGS, "The eventfd that signals events."},
    {"add_listener", (PyCFunction)engine_add_listener, METH_VARARGS,
     "add_listener(kind, fds, target_ip, target_port) -> listener id"},
    {"configure", (PyCFunction)engine_configure, METH_VARARGS,
     "configure(id, mode, mtls, plaintext_allowed, plaintext_detail, epoch, gen, ctx)"},
    {"resolve", (PyCFunction)engine_resolve, METH_VARARGS,
     "resolve(conn_id, allowed, reason, detail, peer_id)"},
    {"events", (PyCFunction)engine_events, METH_NOARGS, "Pending events, oldest first."},
    {"stats", (PyCFunction)engine_stats, METH_VARARGS, "stats(id) -> counters of a listener"},
    {"pending", (PyCFunction)engine_pending, METH_NOARGS, "Connections sniffing or in handshake."},
    {"connections", (PyCFunction)engine_connections, METH_NOARGS, "Open connections."},
    {"unlisten", (PyCFunction)engine_unlisten, METH_NOARGS, "Stop accepting (synchronous)."},
    {"abort_all", (PyCFunction)engine_abort_all, METH_NOARGS, "Reset every open connection."},
    {"close", (PyCFunction)engine_close, METH_NOARGS, "Stop the workers."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject EngineType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "trustd.dataplane._native.Engine",
    .tp_basicsize = sizeof(engine),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Native worker threads: accept, sniff, TLS, verdicts from the cache, pump.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)engine_init,
    .tp_dealloc = (destructor)engine_dealloc,
    .tp_methods = engine_methods,
};

/* ------------------------------------------------------------------------ */
/* fuzzing entry point: the sniffer and OpenSSL's ClientHello handling       */

static uint64_t xorshift(uint64_t *s) {
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

/* fuzz(iterations, seed, ctx, sample) -> (tls, plaintext, more, handshakes_run) */
static PyObject *native_fuzz(PyObject *Py_UNUSED(mod), PyObject *args) {
    long long iterations;
    unsigned long long seed;
    PyObject *ctxobj;
    Py_buffer sample;
    if (!PyArg_ParseTuple(args, "LKO!y*", &iterations, &seed, &TlsContextType, &ctxobj, &sample))
        return NULL;
    /* the proxy's settings without a certificate: OpenSSL parses every ClientHello in full,
       then stops (no cipher can be chosen) instead of spending each input on key exchange */
    (void)ctxobj;
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        PyBuffer_Release(&sample);
        return ssl_error("cannot create an SSL_CTX");
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET | SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    SSL_CTX_set1_groups_list(ctx, "X25519:P-256:P-384");
    uint64_t s = seed ? seed : 0x9e3779b97f4a7c15ULL;
    long long counts[4] = {0, 0, 0, 0};
    int bad = 0;
    unsigned char *in = malloc(sample.len + 1024);
    if (!in) {
        PyBuffer_Release(&sample);
        return PyErr_NoMemory();
    }
    Py_BEGIN_ALLOW_THREADS
    for (long long it = 0; it < iterations && !bad; it++) {
        size_t n;
        uint64_t r = xorshift(&s);
        if ((r & 3) == 0 || sample.len == 0) { /* random bytes, often TLS-shaped */
            n = (size_t)(xorshift(&s) % 600);
            for (size_t i = 0; i < n; i++) in[i] = (unsigned char)xorshift(&s);
            if (n >= 3 && (r & 4)) {
                in[0] = 0x16;
                in[1] = 0x03;
                in[2] = (unsigned char)(xorshift(&s) % 6);
            }
        } else { /* a real ClientHello, mutated and perhaps cut short */
            n = (size_t)sample.len;
            memcpy(in, sample.buf, n);
            int flips = 1 + (int)(xorshift(&s) % 8);
            for (int f = 0; f < flips; f++) {
                size_t at = (size_t)(xorshift(&s) % n);
                in[at] = (r & 8) ? (unsigned char)xorshift(&s) : (in[at] ^ (unsigned char)(1u << (xorshift(&s) % 8)));
            }
            if (r & 16) n = (size_t)(xorshift(&s) % (n + 1));
        }
        /* the sniffer: every split of the first bytes gives the same verdict */
        int whole = classify(in, n < 3 ? n : 3);
        for (size_t k = 0; k < 3 && k <= n; k++) {
            int part = classify(in, k);
            if (part != SN_MORE && part != whole) bad = 1;
        }
        counts[whole == SN_TLS ? 0 : whole == SN_PLAINTEXT ? 1 : 2]++;
        if (whole != SN_TLS) continue;
        /* OpenSSL parses the ClientHello the way a connection would feed it */
        SSL *ssl = SSL_new(ctx);
        BIO *rb = BIO_new(BIO_s_mem());
        BIO *wb = BIO_new(BIO_s_mem());
        if (!ssl || !rb || !wb) {
            SSL_free(ssl);
            BIO_free(rb);
            BIO_free(wb);
            continue;
        }
        BIO_write(rb, in, (int)n);
        BIO_set_mem_eof_return(rb, -1);
        SSL_set_bio(ssl, rb, wb);
        SSL_set_accept_state(ssl);
        ERR_clear_error();
        (void)SSL_do_handshake(ssl);
        ERR_clear_error();
        SSL_free(ssl);
        counts[3]++;
    }
    Py_END_ALLOW_THREADS
    SSL_CTX_free(ctx);
    free(in);
    PyBuffer_Release(&sample);
    if (bad) {
        PyErr_SetString(PyExc_AssertionError, "the sniffer changed its verdict with more bytes");
        return NULL;
    }
    return Py_BuildValue("(LLLL)", counts[0], counts[1], counts[2], counts[3]);
}

static PyObject *native_classify(PyObject *Py_UNUSED(mod), PyObject *args) {
    Py_buffer b;
    if (!PyArg_ParseTuple(args, "y*", &b)) return NULL;
    int v = classify(b.buf, (size_t)b.len);
    PyBuffer_Release(&b);
    return PyLong_FromLong(v);
}

static PyObject *native_openssl_version(PyObject *Py_UNUSED(mod), PyObject *Py_UNUSED(x)) {
    return PyUnicode_FromString(OpenSSL_version(OPENSSL_VERSION));
}

static PyMethodDef module_methods[] = {
    {"fuzz", native_fuzz, METH_VARARGS,
     "fuzz(iterations, seed, ctx, sample) -> (tls, plaintext, undecided, handshakes)"},
    {"classify", native_classify, METH_VARARGS, "classify(prefix) -> 0 more, 1 tls, 2 plaintext"},
    {"openssl_version", native_openssl_version, METH_NOARGS, "The OpenSSL the core runs on."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT, "trustd.dataplane._native",
    "The native data-plane core of trustd proxy (epoll worker threads on OpenSSL).", -1,
    module_methods,
};

PyMODINIT_FUNC PyInit__native(void) {
    if (PyType_Ready(&TlsContextType) < 0 || PyType_Ready(&EngineType) < 0) return NULL;
    out_method = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "trustd-out");
    if (!out_method || !BIO_meth_set_write(out_method, out_write) ||
        !BIO_meth_set_ctrl(out_method, out_ctrl) || !BIO_meth_set_create(out_method, out_create)) {
        PyErr_SetString(PyExc_RuntimeError, "cannot create the output BIO method");
        return NULL;
    }
    chain_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, chainstore_free);
    if (chain_index < 0) {
        PyErr_SetString(PyExc_RuntimeError, "cannot register the chain store with OpenSSL");
        return NULL;
    }
    PyObject *m = PyModule_Create(&native_module);
    if (!m) return NULL;
    Py_INCREF(&TlsContextType);
    Py_INCREF(&EngineType);
    if (PyModule_AddObject(m, "TlsContext", (PyObject *)&TlsContextType) < 0 ||
        PyModule_AddObject(m, "Engine", (PyObject *)&EngineType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
#if defined(__SANITIZE_ADDRESS__)
    PyModule_AddIntConstant(m, "SANITIZED", 1); /* built with AddressSanitizer */
#else
    PyModule_AddIntConstant(m, "SANITIZED", 0);
#endif
    PyModule_AddIntConstant(m, "MODE_STRICT", MODE_STRICT);
    PyModule_AddIntConstant(m, "MODE_PERMISSIVE", MODE_PERMISSIVE);
    PyModule_AddIntConstant(m, "MODE_DISABLE", MODE_DISABLE);
    PyModule_AddIntConstant(m, "KIND_INBOUND", KIND_INBOUND);
    PyModule_AddIntConstant(m, "KIND_OUTBOUND", KIND_OUTBOUND);
    return m;
}
