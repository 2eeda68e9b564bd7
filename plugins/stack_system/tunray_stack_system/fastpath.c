/* The system stack's per-packet loop for known NAT entries, in C (cffi API mode).
 *
 * Theory of operation.  Python's TcpNat (nat.py) owns every NAT entry; this file keeps a
 * mirror of the entries the fast path may use (inserted by Python once an entry's SYN has
 * passed, removed when Python frees it) and runs the loop "read a packet from the TUN,
 * rewrite it in place, write it back" for the packets Python's SystemCore._fast_tcp would
 * accept, with the same byte-for-byte rewrite (RFC 1624 deltas precomputed by Python per
 * entry).  It stops at the first packet it will not handle and leaves it in the buffer for
 * Python's slow path, so every packet still leaves in the order it came.
 *
 * What C decides on its own, and what it reports instead of deciding:
 *   - per entry, ``last`` (the time of the last packet): Python's idle sweep reads it;
 *   - an app segment with ACK on an entry still half-open: a note (Python takes the entry
 *     out of its half-open budget), the half-open flag here is cleared;
 *   - FIN or RST either way: a note with the flags (Python's TcpNat.ending starts the
 *     linger); the packet itself is rewritten and passed, as Python does;
 *   - any SYN from the app (a retransmission, or a new connection reusing a lingering
 *     4-tuple): declined, Python's slow path decides.
 * Notes are applied by Python after every call, before it handles a declined packet.
 *
 * The key table hashes the 4-tuple with a per-table random seed (the app chooses its ports:
 * a fixed hash would let it build long chains); the NAT port table is direct, one slot per
 * port and family.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SF_AGAIN 0   /* nothing left to read */
#define SF_BATCH 1   /* the batch is done */
#define SF_SLOW 2    /* buf[:len] holds a packet for Python */
#define SF_WRITE 3   /* buf[:len] holds a rewritten packet the write refused (errno in *err) */
#define SF_EOF 4     /* the device read returned 0 bytes */
#define SF_ERROR 5   /* the read failed (errno in *err) */

#define SF_NOTE_ESTABLISHED 1
#define SF_NOTE_APP 2
#define SF_NOTE_KERNEL 3

#define VNET_LEN 10
#define F_FIN 0x01
#define F_SYN 0x02
#define F_RST 0x04
#define F_ACK 0x10

struct sf_entry {
    double last;
    int64_t handle;
    struct sf_entry *next;      /* hash chain */
    uint8_t key[36];
    uint8_t keylen;
    uint8_t version;
    uint8_t half_open;
    uint16_t port;
    uint8_t fwd_addr[32], back_addr[32];
    uint8_t fwd_ports[4], back_ports[4];
    uint32_t fwd_ip, fwd_l4, back_ip, back_l4;
};

struct sf_note { int64_t handle; int32_t kind; int32_t flags; };

#define MAX_NOTES 1024  /* at most two per packet: a batch is at most MAX_NOTES / 2 */

struct sf_table {
    struct sf_entry **buckets;
    uint32_t mask;
    uint32_t seed;
    size_t count;
    struct sf_entry **by_port[2];   /* [0] IPv4, [1] IPv6 */
    uint8_t reply[2][34];           /* local + peer + listen port: a packet from the listener */
    uint8_t reply_len[2];           /* 0: the family has no addressing */
    uint8_t bad_flags[256];
    int vnet;
    uint32_t verify_max;
    size_t nnotes;
    struct sf_note notes[MAX_NOTES];
};

static uint32_t sf_hash(const struct sf_table *t, const uint8_t *k, size_t len)
{
    uint32_t h = t->seed ^ (uint32_t)len;
    for (size_t i = 0; i + 4 <= len; i += 4) {
        uint32_t w;
        memcpy(&w, k + i, 4);
        h ^= w;
        h *= 0x9E3779B1u;
        h ^= h >> 15;
    }
    h *= 0x85EBCA6Bu;
    h ^= h >> 13;
    return h;
}

struct sf_table *sf_new(uint32_t max_entries, const uint8_t *bad_flags, int vnet, uint32_t verify_max,
                        uint32_t seed)
{
    struct sf_table *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    uint32_t n = 1024;
    while (n < max_entries && n < (1u << 22))
        n <<= 1;
    t->buckets = calloc(n, sizeof *t->buckets);
    t->by_port[0] = calloc(65536, sizeof(struct sf_entry *));
    t->by_port[1] = calloc(65536, sizeof(struct sf_entry *));
    if (!t->buckets || !t->by_port[0] || !t->by_port[1]) {
        free(t->buckets);
        free(t->by_port[0]);
        free(t->by_port[1]);
        free(t);
        return NULL;
    }
    t->mask = n - 1;
    t->seed = seed;
    memcpy(t->bad_flags, bad_flags, 256);
    t->vnet = vnet;
    t->verify_max = verify_max;
    return t;
}

void sf_side(struct sf_table *t, int version, const uint8_t *reply, size_t len)
{
    int v = version == 6;
    if (len > sizeof t->reply[v])
        return;
    memcpy(t->reply[v], reply, len);
    t->reply_len[v] = (uint8_t)len;
}

void sf_destroy(struct sf_table *t)
{
    if (!t)
        return;
    for (uint32_t i = 0; i <= t->mask; i++) {
        struct sf_entry *e = t->buckets[i];
        while (e) {
            struct sf_entry *next = e->next;
            free(e);
            e = next;
        }
    }
    free(t->buckets);
    free(t->by_port[0]);
    free(t->by_port[1]);
    free(t);
}

static struct sf_entry *lookup_key(const struct sf_table *t, const uint8_t *k, size_t len)
{
    for (struct sf_entry *e = t->buckets[sf_hash(t, k, len) & t->mask]; e; e = e->next)
        if (e->keylen == len && memcmp(e->key, k, len) == 0)
            return e;
    return NULL;
}

/* Python computed every field (nat.NatEntry); NULL if out of memory or already present. */
struct sf_entry *sf_add(struct sf_table *t, int64_t handle, int version, const uint8_t *key, uint16_t port,
                        const uint8_t *fwd_addr, const uint8_t *fwd_ports, uint32_t fwd_ip, uint32_t fwd_l4,
                        const uint8_t *back_addr, const uint8_t *back_ports, uint32_t back_ip, uint32_t back_l4,
                        int half_open, double now)
{
    size_t alen = version == 4 ? 4 : 16;
    size_t klen = 2 * alen + 4;
    int v = version == 6;
    if (lookup_key(t, key, klen) || t->by_port[v][port])
        return NULL;
    struct sf_entry *e = calloc(1, sizeof *e);
    if (!e)
        return NULL;
    e->last = now;
    e->handle = handle;
    memcpy(e->key, key, klen);
    e->keylen = (uint8_t)klen;
    e->version = (uint8_t)version;
    e->half_open = half_open != 0;
    e->port = port;
    memcpy(e->fwd_addr, fwd_addr, 2 * alen);
    memcpy(e->back_addr, back_addr, 2 * alen);
    memcpy(e->fwd_ports, fwd_ports, 4);
    memcpy(e->back_ports, back_ports, 4);
    e->fwd_ip = fwd_ip;
    e->fwd_l4 = fwd_l4;
    e->back_ip = back_ip;
    e->back_l4 = back_l4;
    uint32_t b = sf_hash(t, key, klen) & t->mask;
    e->next = t->buckets[b];
    t->buckets[b] = e;
    t->by_port[v][port] = e;
    t->count++;
    return e;
}

void sf_remove(struct sf_table *t, struct sf_entry *e)
{
    struct sf_entry **p = &t->buckets[sf_hash(t, e->key, e->keylen) & t->mask];
    while (*p && *p != e)
        p = &(*p)->next;
    if (*p)
        *p = e->next;
    int v = e->version == 6;
    if (t->by_port[v][e->port] == e)
        t->by_port[v][e->port] = NULL;
    t->count--;
    free(e);
}

void sf_established(struct sf_entry *e)
{
    e->half_open = 0;
}

size_t sf_count(const struct sf_table *t)
{
    return t->count;
}

/* the notes since the last call (valid until the next sf_pump / sf_packet) */
struct sf_note *sf_notes(struct sf_table *t, size_t *n)
{
    *n = t->nnotes;
    t->nnotes = 0;
    return t->notes;
}

static void note(struct sf_table *t, int64_t handle, int kind, int flags)
{
    struct sf_note *nt = &t->notes[t->nnotes++];
    nt->handle = handle;
    nt->kind = kind;
    nt->flags = flags;
}

/* 16-bit big-endian words of p[0:len] summed, the last odd byte as a high byte (mod 0xFFFF later) */
static uint64_t sum_words(const uint8_t *p, size_t len)
{
    uint64_t s = 0;
    size_t i = 0;
    for (; i + 1 < len; i += 2)
        s += ((uint32_t)p[i] << 8) | p[i + 1];
    if (i < len)
        s += (uint32_t)p[i] << 8;
    return s;
}

/* SystemCore._fast_tcp: 1 if the packet was rewritten in place, 0 (nothing changed) if not */
static int pump(struct sf_table *t, int fd, uint8_t *buf, size_t cap, int batch, double now, size_t *len,
                int *err, int *done);

static int fast_tcp(struct sf_table *t, uint8_t *p, size_t ip, size_t addrs, size_t l4, size_t end, int v,
                    int partial, int csum_ok, double now)
{
    uint8_t flags = p[l4 + 13];
    size_t hlen = (size_t)(p[l4 + 12] >> 4) * 4;
    if (hlen < 20 || hlen > end - l4 || t->bad_flags[flags])
        return 0;
    size_t alen = v ? 16 : 4;
    if (!csum_ok && (end - l4 <= t->verify_max || (flags & (F_FIN | F_SYN | F_RST)))) {
        uint64_t s = sum_words(p + addrs, 2 * alen) + 6 + (end - l4) + sum_words(p + l4, end - l4);
        if (s % 0xFFFF)
            return 0;
    }
    struct sf_entry *e;
    const uint8_t *addr, *ports;
    uint32_t d_ip, d_l4;
    size_t rlen = t->reply_len[v];
    if (rlen && memcmp(p + addrs, t->reply[v], rlen) == 0) {
        e = t->by_port[v][(p[l4 + 2] << 8) | p[l4 + 3]];
        if (!e)
            return 0;
        addr = e->back_addr;
        ports = e->back_ports;
        d_ip = e->back_ip;
        d_l4 = e->back_l4;
        if (flags & (F_FIN | F_RST))
            note(t, e->handle, SF_NOTE_KERNEL, flags);
    } else {
        if (flags & F_SYN)
            return 0;
        e = lookup_key(t, p + addrs, 2 * alen + 4);
        if (!e)
            return 0;
        if (e->half_open) {
            if (!(flags & F_ACK))
                return 0;
            e->half_open = 0;
            note(t, e->handle, SF_NOTE_ESTABLISHED, flags);
        }
        addr = e->fwd_addr;
        ports = e->fwd_ports;
        d_ip = e->fwd_ip;
        d_l4 = e->fwd_l4;
        if (flags & (F_FIN | F_RST))
            note(t, e->handle, SF_NOTE_APP, flags);
    }
    e->last = now;
    uint32_t c = ((uint32_t)p[l4 + 16] << 8) | p[l4 + 17];
    memcpy(p + addrs, addr, 2 * alen);
    if (!v) {  /* IPv4: its header checksum covers the addresses */
        uint32_t ip_sum = ((uint32_t)p[ip + 10] << 8) | p[ip + 11];
        ip_sum = 0xFFFF - ((0xFFFF - ip_sum) + d_ip) % 0xFFFF;
        p[ip + 10] = (uint8_t)(ip_sum >> 8);
        p[ip + 11] = (uint8_t)ip_sum;
    }
    memcpy(p + l4, ports, 4);
    if (partial) {
        c = (c + d_ip) % 0xFFFF;
        if (!c)
            c = 0xFFFF;
    } else {
        c = 0xFFFF - ((0xFFFF - c) + d_l4) % 0xFFFF;
    }
    p[l4 + 16] = (uint8_t)(c >> 8);
    p[l4 + 17] = (uint8_t)c;
    return 1;
}

/* SystemCore.feed_into: 1 if buf[:n] was rewritten in place, 0 (unchanged) for Python's slow path */
int sf_packet(struct sf_table *t, uint8_t *p, size_t n, double now)
{
    if (t->nnotes > MAX_NOTES - 2)  /* nobody took the notes: the packet waits for Python */
        return 0;
    size_t ip = 0;
    int partial = 0, csum_ok = 0;
    if (t->vnet) {
        if (n < VNET_LEN)
            return 0;
        partial = p[0] & 1;         /* VIRTIO_NET_HDR_F_NEEDS_CSUM */
        csum_ok = (p[0] & 3) != 0;  /* ... or DATA_VALID */
        ip = VNET_LEN;
    }
    if (n >= ip + 40 && p[ip] == 0x45 && p[ip + 9] == 6) {
        size_t total = ((size_t)p[ip + 2] << 8) | p[ip + 3];
        if (total < 40 || total > n - ip || (p[ip + 6] & 0x3F) || p[ip + 7])
            return 0;
        if (sum_words(p + ip, 20) % 0xFFFF)
            return 0;
        return fast_tcp(t, p, ip, ip + 12, ip + 20, ip + total, 0, partial, csum_ok, now);
    }
    if (n >= ip + 60 && (p[ip] >> 4) == 6 && p[ip + 6] == 6) {
        size_t total = 40 + (((size_t)p[ip + 4] << 8) | p[ip + 5]);
        if (total > n - ip)
            return 0;
        return fast_tcp(t, p, ip, ip + 8, ip + 40, ip + total, 1, partial, csum_ok, now);
    }
    return 0;
}

/* Read, rewrite, write back, up to *batch* packets (see the SF_* codes).  *done* counts the
 * packets read (a declined one included); *len* is the length of the packet left in buf;
 * *notes* how many notes wait for sf_notes. */
int sf_pump(struct sf_table *t, int fd, uint8_t *buf, size_t cap, int batch, double now, size_t *len, int *err,
            int *done, size_t *notes)
{
    int rc = pump(t, fd, buf, cap, batch, now, len, err, done);
    *notes = t->nnotes;
    return rc;
}

static int pump(struct sf_table *t, int fd, uint8_t *buf, size_t cap, int batch, double now, size_t *len,
                int *err, int *done)
{
    int count = 0;
    if (batch > MAX_NOTES / 2)
        batch = MAX_NOTES / 2;
    *err = 0;
    *len = 0;
    while (count < batch) {
        ssize_t n = read(fd, buf, cap);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            *done = count;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return SF_AGAIN;
            *err = errno;
            return SF_ERROR;
        }
        if (n == 0) {
            *done = count;
            return SF_EOF;
        }
        count++;
        *len = (size_t)n;
        if (!sf_packet(t, buf, (size_t)n, now)) {
            *done = count;
            return SF_SLOW;
        }
        if (write(fd, buf, (size_t)n) < 0) {
            *err = errno;
            *done = count;
            return SF_WRITE;
        }
    }
    *done = count;
    return SF_BATCH;
}
