/* tunray's glue around Debian's unpatched lwIP 2.1.3 (liblwip0), compiled by cffi.
 *
 * Theory of operation
 * -------------------
 * lwIP runs single-threaded on the caller's thread: lwip_init() once per process,
 * never tcpip_init(), so lwIP's core-locking checks are no-ops and every callback
 * runs inside one of the tr_* calls below.  Nothing here calls back into Python:
 * lwIP's callbacks (accept/recv/sent/err, the netif output) only record events and
 * copy packets into buffers that Python collects after each call.  A Python
 * exception therefore can never cross a C frame.
 *
 * Input.  Unpatched lwIP drops packets for foreign destinations in ip_input, so
 * the caller parses the IP header (Python's shared packet code) and tr_input
 * fills lwIP's exported ip_data globals from it and hands the TCP segment to the
 * exported tcp_input().  A pure SYN that matches no pcb is *not* handed over: it
 * is reported (TR_NEW_SYN) so Python can open a flow, hold the SYN (lazy
 * handshake) and later inject it with TR_IN_FORCE once a listening pcb exists on
 * the destination port.  The accepted pcb's local address is the original
 * destination (lwIP copies ip_current_dest_addr()), so replies carry it as source.
 *
 * Output.  One netif, bound to every listener (tcp_bind_netif) and hence to every
 * accepted pcb, is also netif_default and the only netif, so ip4_route/ip6_route
 * (used for RSTs without a pcb) find it too.  Its output callbacks copy each
 * packet into `out`, optionally behind a virtio-net header; consecutive full-size
 * segments of one flow are merged into one GSO super-packet, and the MSS option of
 * lwIP's SYN-ACKs can be raised to what the TUN MTU allows.
 *
 * Ownership.  A tr_conn is allocated in the accept callback and freed only by
 * tr_release (Python owns it until then).  While tr_conn.pcb is set we own the pcb's
 * callbacks; we give the pcb back to lwIP ("detach": arg and callbacks cleared)
 * once both directions are finished or on abort, after which lwIP frees it on its
 * own (TIME_WAIT, LAST_ACK, ...).  The err callback means lwIP already freed it.
 * Received pbufs stay in tr_conn.rx until read; tcp_recved() is called only for bytes
 * the app read, so lwIP's receive window (64 KiB in Debian's build) is the flow's
 * backpressure and rx never exceeds it (pbuf tot_len is 16 bits).  A smaller window cap
 * (the TUN's tcpBufferSize) is kept by never crediting the first `withhold` bytes read:
 * the right edge stops advancing, it never moves left.
 *
 * Time.  sys_now() is defined here as well: lwIP calls it through the PLT, and the
 * dynamic linker resolves it to this module (the dlopen'ed root of the group)
 * before liblwip's own, so lwIP's timers run on the `now` Python passes in.
 * tr_clock_hooked() reports whether that interposition took effect.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lwip/init.h"
#include "lwip/ip.h"
#include "lwip/ip_addr.h"
#include "lwip/netif.h"
#include "lwip/pbuf.h"
#include "lwip/tcp.h"
#include "lwip/priv/tcp_priv.h"
#include "lwip/timeouts.h"

#define TR_EV_ACCEPTED 1
#define TR_EV_READABLE 2
#define TR_EV_WRITABLE 3
#define TR_EV_EOF 4    /* the app's FIN arrived */
#define TR_EV_CLOSED 5 /* ended in order */
#define TR_EV_RESET 6  /* ended abnormally; tr_conn.err says why */

#define TR_IN_FORCE 1
#define TR_IN_CSUM_PARTIAL 2
#define TR_IN_CSUM_VALID 4
#define TR_IN_TIGHT 8 /* the buffer budget has less room than a window: in order only, no ooseq */

#define TR_OK 0
#define TR_NEW_SYN 1
#define TR_OK_EVENTS 2
#define TR_E_TRUNCATED (-1)
#define TR_E_OFFSET (-2)
#define TR_E_CHECKSUM (-3)
#define TR_E_NOMEM (-4)
#define TR_E_ADDRESS (-5)
#define TR_E_OPTIONS (-6)
#define TR_E_SYN (-7)
#define TR_E_BUDGET (-8)

#define VNET_LEN 10

struct tr_conn {
    struct tcp_pcb *pcb; /* NULL once detached or freed by lwIP */
    struct pbuf *rx;     /* received, not yet read */
    uint32_t rx_len;
    uint32_t withhold; /* bytes still to read without crediting them (window cap) */
    uint8_t key[37]; /* version, src, sport, dst, dport (network order) */
    uint8_t keylen;
    uint8_t fin_in;    /* the app's FIN arrived: EOF after rx */
    uint8_t shut_out;  /* our FIN is queued */
    uint8_t discard;   /* closed for reading: drop what still arrives */
    uint8_t closed;    /* the pcb ended (reset, abort, error) */
    int8_t err;        /* lwIP's err_t when closed */
    uint8_t want_read; /* report READABLE on the next change */
    uint8_t want_write;
    uint8_t shut_pending; /* FIN requested while sq still holds bytes */
    uint8_t released;     /* Python let go: free once the pcb is given back */
    uint8_t ended;        /* CLOSED or RESET was reported */
    int64_t handle;       /* Python's */
    uint8_t *sq;          /* bytes accepted from the app, not yet in lwIP */
    size_t sq_head, sq_len, sq_cap;
};

struct tr_event {
    int32_t kind;
    struct tr_conn *conn;
};

struct tr_stats {
    uint64_t conns_live, pbufs_in, segs_in, pkts_out, pkts_dropped_out, gso_merged, mss_rewritten, segs_clipped;
    uint64_t rx_bytes; /* received bytes held in tr_conn.rx, all connections */
};

static struct netif tr_netif;
static int tr_ready;
static uint32_t tr_now_ms;
static int tr_clock_called;

static struct tr_event *ev_buf;
static size_t ev_len, ev_cap;

static uint8_t *out_buf;
static size_t out_len, out_cap;
static uint32_t *out_recs; /* (start, length) pairs */
static size_t out_n, out_cap_n;
static int out_vnet, out_gso;
static uint32_t out_mss_v4, out_mss_v6; /* 0: no MSS rewrite */
/* the open coalescing candidate: the last record */
static int last_open;
static size_t last_iplen, last_tcplen; /* header lengths of the last record */
static uint32_t last_next_seq, last_segs, last_seg_size;

static struct tcp_pcb **listeners; /* by port, allocated on first use */
static struct tr_stats stats;
static size_t send_high_water = 256 * 1024;
static uint32_t withhold_bytes; /* TCP_WND minus the window cap */
static uint32_t idle_ticks = 600; /* TCP idle timeout in slow-timer ticks (500 ms) */

static void conn_free(struct tr_conn *c);
static void recved(struct tcp_pcb *pcb, size_t n);

uint32_t sys_now(void) {
    tr_clock_called = 1;
    return tr_now_ms;
}

static void tr_set_now(double now) { tr_now_ms = (uint32_t)(uint64_t)(now * 1000.0); }

/* --- events ----------------------------------------------------------------------------- */

static void push_event(int kind, struct tr_conn *c) {
    if (c->released)
        return;
    if (kind == TR_EV_CLOSED || kind == TR_EV_RESET) {
        if (c->ended)
            return;
        c->ended = 1;
    }
    if (ev_len == ev_cap) {
        size_t cap = ev_cap ? ev_cap * 2 : 256;
        struct tr_event *b = realloc(ev_buf, cap * sizeof *b);
        if (b == NULL)
            abort(); /* cannot report an event: state would silently diverge */
        ev_buf = b;
        ev_cap = cap;
    }
    ev_buf[ev_len].kind = kind;
    ev_buf[ev_len].conn = c;
    ev_len++;
}

/* Drop queued events naming c (it is about to be freed). */
static void purge_events(struct tr_conn *c) {
    for (size_t i = 0; i < ev_len; i++)
        if (ev_buf[i].conn == c)
            ev_buf[i].kind = 0;
}

static struct tr_event *tr_events(size_t *n) {
    *n = ev_len;
    ev_len = 0;
    return ev_buf;
}

/* --- checksums -------------------------------------------------------------------------- */

static uint64_t sum_bytes(const uint8_t *p, size_t n, uint64_t acc) {
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        acc += (v & 0xffffffffu) + (v >> 32);
        p += 8;
        n -= 8;
    }
    while (n >= 2) {
        uint16_t v;
        memcpy(&v, p, 2);
        acc += v;
        p += 2;
        n -= 2;
    }
    if (n) {
        uint16_t v = 0;
        memcpy(&v, p, 1);
        acc += v;
    }
    return acc;
}

/* Fold to 16 bits; the result is in the byte order of the summed memory. */
static uint16_t fold(uint64_t acc) {
    while (acc >> 16)
        acc = (acc & 0xffff) + (acc >> 16);
    return (uint16_t)acc;
}

/* Pseudo-header sum (memory byte order) of a TCP segment of `len` bytes. */
static uint64_t pseudo(const uint8_t *ip, int v6, uint32_t len) {
    uint64_t acc = v6 ? sum_bytes(ip + 8, 32, 0) : sum_bytes(ip + 12, 8, 0);
    uint8_t tail[8] = {0, 0, (uint8_t)(len >> 8), (uint8_t)len, 0, 0, 0, IP_PROTO_TCP};
    if (v6) {
        tail[0] = (uint8_t)(len >> 24);
        tail[1] = (uint8_t)(len >> 16);
        return sum_bytes(tail, 8, acc);
    }
    return sum_bytes(tail + 2, 2, sum_bytes(tail + 6, 2, acc));
}

static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static void wr16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

/* --- output ----------------------------------------------------------------------------- */

static uint8_t *out_reserve(size_t n) {
    if (out_len + n > out_cap) {
        size_t cap = out_cap ? out_cap : 1 << 16;
        while (cap < out_len + n)
            cap *= 2;
        uint8_t *b = realloc(out_buf, cap);
        if (b == NULL)
            return NULL;
        out_buf = b;
        out_cap = cap;
    }
    return out_buf + out_len;
}

static int out_record(size_t start, size_t len) {
    if (out_n == out_cap_n) {
        size_t cap = out_cap_n ? out_cap_n * 2 : 512;
        uint32_t *r = realloc(out_recs, cap * 2 * sizeof *r);
        if (r == NULL)
            return -1;
        out_recs = r;
        out_cap_n = cap;
    }
    out_recs[2 * out_n] = (uint32_t)start;
    out_recs[2 * out_n + 1] = (uint32_t)len;
    out_n++;
    return 0;
}

static void ip4_fix_header(uint8_t *ip) {
    ip[10] = ip[11] = 0;
    uint16_t c = (uint16_t)~fold(sum_bytes(ip, (size_t)(ip[0] & 0x0f) * 4, 0));
    memcpy(ip + 10, &c, 2);
}

/* Close the coalescing candidate: a merged record becomes a GSO super-packet. */
static void last_finish(void) {
    if (!last_open)
        return;
    last_open = 0;
    if (last_segs < 2)
        return;
    uint32_t start = out_recs[2 * (out_n - 1)], len = out_recs[2 * (out_n - 1) + 1];
    uint8_t *h = out_buf + start, *ip = h + VNET_LEN;
    int v6 = (ip[0] >> 4) == 6;
    uint32_t tcp_total = len - VNET_LEN - (uint32_t)last_iplen;
    uint8_t *tcp = ip + last_iplen;
    tcp[16] = tcp[17] = 0;
    uint16_t ps = fold(pseudo(ip, v6, tcp_total)); /* partial sum, not complemented */
    memcpy(tcp + 16, &ps, 2);
    /* struct virtio_net_hdr, little-endian: flags, gso_type, hdr_len, gso_size,
       csum_start, csum_offset */
    uint16_t hdr_len = (uint16_t)(last_iplen + last_tcplen), gso = (uint16_t)last_seg_size;
    uint16_t cs = (uint16_t)last_iplen, co = 16;
    h[0] = 1;          /* VIRTIO_NET_HDR_F_NEEDS_CSUM */
    h[1] = v6 ? 4 : 1; /* GSO_TCPV6 : GSO_TCPV4 */
    memcpy(h + 2, &hdr_len, 2);
    memcpy(h + 4, &gso, 2);
    memcpy(h + 6, &cs, 2);
    memcpy(h + 8, &co, 2);
    stats.gso_merged += last_segs - 1;
}

/* Raise the MSS option of a SYN-ACK to the configured value (RFC 1624 update). */
static void rewrite_mss(uint8_t *tcp, size_t tcplen, uint32_t target) {
    size_t i = 20;
    while (i < tcplen) {
        uint8_t kind = tcp[i];
        if (kind == 0)
            return;
        if (kind == 1) {
            i++;
            continue;
        }
        if (i + 1 >= tcplen || tcp[i + 1] < 2 || i + tcp[i + 1] > tcplen)
            return;
        if (kind == 2 && tcp[i + 1] == 4) {
            uint16_t old = rd16(tcp + i + 2);
            if (target > 0xffff)
                target = 0xffff;
            if (target <= old)
                return;
            uint16_t hc = rd16(tcp + 16);
            uint32_t s = (uint16_t)~hc + (uint16_t)~old + target;
            s = (s & 0xffff) + (s >> 16);
            s = (s & 0xffff) + (s >> 16);
            wr16(tcp + i + 2, (uint16_t)target);
            wr16(tcp + 16, (uint16_t)~s);
            stats.mss_rewritten++;
            return;
        }
        i += tcp[i + 1];
    }
}

static err_t tr_emit(struct pbuf *p) {
    size_t total = p->tot_len, pre = out_vnet ? VNET_LEN : 0;
    uint8_t *dst = out_reserve(pre + total);
    if (dst == NULL) {
        stats.pkts_dropped_out++;
        return ERR_MEM;
    }
    if (pbuf_copy_partial(p, dst + pre, (u16_t)total, 0) != total) {
        stats.pkts_dropped_out++;
        return ERR_BUF;
    }
    uint8_t *ip = dst + pre;
    int v6 = (ip[0] >> 4) == 6;
    size_t iplen = v6 ? 40 : (size_t)(ip[0] & 0x0f) * 4;
    uint8_t proto = v6 ? ip[6] : ip[9];
    if (proto != IP_PROTO_TCP || total < iplen + 20) {
        /* lwIP's own ND/MLD/IGMP chatter: never meant for the app */
        stats.pkts_dropped_out++;
        return ERR_OK;
    }
    uint8_t *tcp = ip + iplen;
    size_t tcplen = (size_t)(tcp[12] >> 4) * 4;
    uint8_t flags = tcp[13];
    if ((flags & (TCP_SYN | TCP_ACK)) == (TCP_SYN | TCP_ACK) && (v6 ? out_mss_v6 : out_mss_v4))
        rewrite_mss(tcp, tcplen, v6 ? out_mss_v6 : out_mss_v4);
    if (pre)
        memset(dst, 0, VNET_LEN);
    size_t payload = total - iplen - tcplen;
    uint32_t seq = rd32(tcp + 4);
    stats.pkts_out++;
    if (out_gso && last_open && payload > 0 && payload <= last_seg_size &&
        (flags & ~(TCP_PSH)) == TCP_ACK && iplen == last_iplen && tcplen == last_tcplen &&
        seq == last_next_seq) {
        uint32_t start = out_recs[2 * (out_n - 1)], len = out_recs[2 * (out_n - 1) + 1];
        uint8_t *lip = out_buf + start + pre, *ltcp = lip + iplen;
        int same = (v6 ? memcmp(lip + 8, ip + 8, 32) == 0 : memcmp(lip + 12, ip + 12, 8) == 0) &&
                   memcmp(ltcp, tcp, 4) == 0 && memcmp(ltcp + 8, tcp + 8, 4) == 0 &&
                   (ltcp[13] & TCP_PSH) == 0 && len - pre + payload <= 65535 - 64 &&
                   memcmp(ltcp + 20, tcp + 20, tcplen - 20) == 0;
        if (same) {
            /* the new packet sits right after the last record: slide its payload down */
            memmove(out_buf + start + len, tcp + tcplen, payload);
            len += (uint32_t)payload;
            out_recs[2 * (out_n - 1) + 1] = len;
            ltcp[13] |= flags & TCP_PSH;
            memcpy(ltcp + 14, tcp + 14, 2); /* latest window */
            if (v6) {
                wr16(lip + 4, (uint16_t)(len - pre - 40));
            } else {
                wr16(lip + 2, (uint16_t)(len - pre));
                ip4_fix_header(lip);
            }
            last_segs++;
            last_next_seq = seq + (uint32_t)payload;
            out_len = start + len;
            if (payload < last_seg_size || (flags & TCP_PSH))
                last_finish();
            return ERR_OK;
        }
    }
    last_finish();
    size_t start = out_len;
    if (out_record(start, pre + total) != 0) {
        stats.pkts_dropped_out++;
        return ERR_MEM;
    }
    out_len += pre + total;
    if (out_gso && payload > 0 && (flags & ~(TCP_PSH)) == TCP_ACK && !(flags & TCP_PSH)) {
        last_open = 1;
        last_iplen = iplen;
        last_tcplen = tcplen;
        last_next_seq = seq + (uint32_t)payload;
        last_segs = 1;
        last_seg_size = (uint32_t)payload;
    }
    return ERR_OK;
}

static err_t tr_output4(struct netif *n, struct pbuf *p, const ip4_addr_t *dst) {
    (void)n;
    (void)dst;
    return tr_emit(p);
}

static err_t tr_output6(struct netif *n, struct pbuf *p, const ip6_addr_t *dst) {
    (void)n;
    (void)dst;
    return tr_emit(p);
}

static err_t tr_netif_input(struct pbuf *p, struct netif *n) {
    (void)n;
    pbuf_free(p);
    return ERR_OK;
}

static err_t tr_netif_init(struct netif *n) {
    n->name[0] = 't';
    n->name[1] = 'r';
    n->output = tr_output4;
    n->output_ip6 = tr_output6;
    n->mtu = 1500;
    n->flags = 0; /* no broadcast, no ARP, no IGMP/MLD: a point-to-point link */
    return ERR_OK;
}

/* Collect the output since the last call.  Pointers stay valid until the next lwIP call. */
static uint8_t *tr_output(uint32_t **recs, size_t *n) {
    last_finish();
    *recs = out_recs;
    *n = out_n;
    uint8_t *b = out_buf;
    out_n = 0;
    out_len = 0;
    return b;
}

/* --- connections -------------------------------------------------------------------------- */

static void put_addr(uint8_t **k, const ip_addr_t *a) {
    if (IP_IS_V6_VAL(*a)) {
        memcpy(*k, ip_2_ip6(a)->addr, 16);
        *k += 16;
    } else {
        memcpy(*k, &ip_2_ip4(a)->addr, 4);
        *k += 4;
    }
}

static size_t make_key(uint8_t *key, const ip_addr_t *src, uint16_t sport, const ip_addr_t *dst,
                       uint16_t dport) {
    uint8_t *k = key;
    *k++ = IP_IS_V6_VAL(*src) ? 6 : 4;
    put_addr(&k, src);
    wr16(k, sport);
    k += 2;
    put_addr(&k, dst);
    wr16(k, dport);
    k += 2;
    return (size_t)(k - key);
}

/* Give the pcb back to lwIP; a released conn is freed here. */
static void detach(struct tr_conn *c) {
    struct tcp_pcb *pcb = c->pcb;
    if (pcb != NULL) {
        tcp_arg(pcb, NULL);
        tcp_sent(pcb, NULL);
        tcp_err(pcb, NULL);
        /* keep our recv callback: with a NULL arg it drops (and acknowledges) late data */
        c->pcb = NULL;
    }
    if (c->released)
        conn_free(c);
}

/* Move queued app bytes into lwIP; queue the FIN once they all went. */
static void push_sq(struct tr_conn *c) {
    struct tcp_pcb *pcb = c->pcb;
    if (pcb == NULL)
        return;
    int wrote = 0;
    while (c->sq_len > 0) {
        size_t room = tcp_sndbuf(pcb);
        if (tcp_sndqueuelen(pcb) >= TCP_SND_QUEUELEN - 2)
            break;
        size_t n = c->sq_len < room ? c->sq_len : room;
        if (n > 0xffff)
            n = 0xffff;
        while (n > 0 && tcp_write(pcb, c->sq + c->sq_head, (u16_t)n, TCP_WRITE_FLAG_COPY) != ERR_OK)
            n /= 2; /* the segment queue is the limit */
        if (n == 0)
            break;
        c->sq_head += n;
        c->sq_len -= n;
        wrote = 1;
    }
    if (c->sq_len == 0)
        c->sq_head = 0;
    if (c->shut_pending && c->sq_len == 0) {
        c->shut_pending = 0;
        c->shut_out = 1;
        tcp_shutdown(pcb, 0, 1);
        wrote = 1;
    }
    if (wrote && c->pcb != NULL)
        tcp_output(pcb);
}

static size_t buffered(const struct tr_conn *c) {
    size_t n = c->sq_len;
    if (c->pcb != NULL)
        n += TCP_SND_BUF - tcp_sndbuf(c->pcb);
    return n;
}

/* After our FIN and theirs: done, unless bytes we still owe are unacknowledged. */
static void maybe_finish(struct tr_conn *c) {
    if (c->fin_in && c->shut_out && c->pcb != NULL) {
        push_event(TR_EV_CLOSED, c);
        detach(c);
    }
}

static void notify_read(struct tr_conn *c) {
    if (c->want_read) {
        c->want_read = 0;
        push_event(TR_EV_READABLE, c);
    }
}

static err_t tr_recv_cb(void *arg, struct tcp_pcb *pcb, struct pbuf *p, err_t err) {
    struct tr_conn *c = arg;
    (void)err;
    if (c == NULL || c->discard) {
        if (p != NULL) {
            tcp_recved(pcb, p->tot_len);
            pbuf_free(p);
        } else if (c != NULL) {
            c->fin_in = 1;
            push_event(TR_EV_EOF, c);
            maybe_finish(c);
        }
        return ERR_OK;
    }
    if (p == NULL) {
        c->fin_in = 1;
        push_event(TR_EV_EOF, c);
        notify_read(c);
        maybe_finish(c); /* both directions done: lwIP finishes the close alone */
        return ERR_OK;
    }
    uint32_t n = p->tot_len;
    if (c->rx == NULL)
        c->rx = p;
    else
        pbuf_cat(c->rx, p);
    c->rx_len += n;
    stats.rx_bytes += n;
    stats.pbufs_in++;
    notify_read(c);
    return ERR_OK;
}

static err_t tr_sent_cb(void *arg, struct tcp_pcb *pcb, u16_t len) {
    struct tr_conn *c = arg;
    (void)len;
    (void)pcb;
    if (c == NULL)
        return ERR_OK;
    push_sq(c);
    if (c->want_write && buffered(c) < send_high_water) {
        c->want_write = 0;
        push_event(TR_EV_WRITABLE, c);
    }
    return ERR_OK;
}

static void tr_err_cb(void *arg, err_t err) {
    struct tr_conn *c = arg;
    if (c == NULL)
        return;
    c->pcb = NULL; /* already freed by lwIP */
    if (err == ERR_CLSD) {
        /* clean close completed while we still held it */
        push_event(TR_EV_CLOSED, c);
    } else {
        c->closed = 1;
        c->err = err;
        push_event(TR_EV_RESET, c);
    }
    c->want_read = c->want_write = 0;
    if (c->released)
        conn_free(c);
}

static err_t tr_accept_cb(void *arg, struct tcp_pcb *npcb, err_t err) {
    (void)arg;
    if (err != ERR_OK || npcb == NULL)
        return ERR_VAL;
    struct tr_conn *c = calloc(1, sizeof *c);
    if (c == NULL) {
        tcp_abort(npcb);
        return ERR_ABRT;
    }
    c->pcb = npcb;
    c->handle = -1;
    c->withhold = withhold_bytes;
    c->keylen = (uint8_t)make_key(c->key, &npcb->remote_ip, npcb->remote_port, &npcb->local_ip,
                                  npcb->local_port);
    tcp_arg(npcb, c);
    tcp_recv(npcb, tr_recv_cb);
    tcp_sent(npcb, tr_sent_cb);
    tcp_err(npcb, tr_err_cb);
    tcp_nagle_disable(npcb);
    stats.conns_live++;
    push_event(TR_EV_ACCEPTED, c);
    return ERR_OK;
}

static int tr_listen(uint16_t port) {
    if (port == 0)
        return -1;
    if (listeners == NULL) {
        listeners = calloc(65536, sizeof *listeners);
        if (listeners == NULL)
            return -1;
    }
    if (listeners[port] != NULL)
        return 0;
    struct tcp_pcb *pcb = tcp_new_ip_type(IPADDR_TYPE_ANY);
    if (pcb == NULL)
        return -1;
    ip_set_option(pcb, SOF_REUSEADDR);
    tcp_bind_netif(pcb, &tr_netif);
    if (tcp_bind(pcb, IP_ANY_TYPE, port) != ERR_OK) {
        tcp_abort(pcb);
        return -1;
    }
    err_t e = ERR_OK;
    struct tcp_pcb *l = tcp_listen_with_backlog_and_err(pcb, 255, &e);
    if (l == NULL) {
        tcp_abort(pcb);
        return -1;
    }
    tcp_accept(l, tr_accept_cb);
    listeners[port] = l;
    return 0;
}

/* --- input ------------------------------------------------------------------------------ */

static void set_addr(ip_addr_t *a, const uint8_t *raw, int v6) {
    memset(a, 0, sizeof *a);
    if (v6) {
        memcpy(ip_2_ip6(a)->addr, raw, 16);
        IP_SET_TYPE_VAL(*a, IPADDR_TYPE_V6);
        ip6_addr_clear_zone(ip_2_ip6(a));
        if (ip6_addr_has_scope(ip_2_ip6(a), IP6_UNKNOWN))
            ip6_addr_set_zone(ip_2_ip6(a), netif_get_index(&tr_netif));
    } else {
        memcpy(&ip_2_ip4(a)->addr, raw, 4);
        IP_SET_TYPE_VAL(*a, IPADDR_TYPE_V4);
    }
}

static struct tcp_pcb *find_pcb(struct tcp_pcb *list, const uint8_t *key, size_t keylen) {
    uint8_t k[37];
    for (struct tcp_pcb *pcb = list; pcb != NULL; pcb = pcb->next) {
        if (pcb->local_port != rd16(key + keylen - 2))
            continue;
        size_t n = make_key(k, &pcb->remote_ip, pcb->remote_port, &pcb->local_ip, pcb->local_port);
        if (n == keylen && memcmp(k, key, n) == 0)
            return pcb;
    }
    return NULL;
}

/* A new SYN for a 4-tuple lwIP holds in TIME_WAIT starts a new connection, as Linux
   allows (RFC 6191); lwIP alone would answer it with an ACK or a RST. */
/* TCP options well formed (RFC 9293 3.2): lwIP 2.1.3 reads an option's length byte
   without checking it lies inside the header (fixed upstream after 2.1.3). */
static int options_ok(const uint8_t *tcp, size_t thl) {
    size_t i = 20;
    while (i < thl) {
        uint8_t kind = tcp[i];
        if (kind == 0)
            return 1;
        if (kind == 1) {
            i++;
            continue;
        }
        if (i + 1 >= thl || tcp[i + 1] < 2 || i + tcp[i + 1] > thl)
            return 0;
        i += tcp[i + 1];
    }
    return 1;
}

static int pcb_exists(const uint8_t *key, size_t keylen) {
    if (find_pcb(tcp_active_pcbs, key, keylen) != NULL)
        return 1;
    struct tcp_pcb *tw = find_pcb(tcp_tw_pcbs, key, keylen);
    if (tw != NULL)
        tcp_abort(tw); /* frees a TIME_WAIT pcb without sending anything */
    return 0;
}

/* Hand one TCP segment to lwIP.  pkt[l3:end] is an IP packet whose header the caller
   validated; pkt[l4:end] its TCP segment.  `key` receives the flow key (37 bytes). */
static int tr_input(const char *cpkt, size_t l3, size_t l4, size_t end, int flags, double now,
                    uint8_t *key, size_t *keylen) {
    const uint8_t *pkt = (const uint8_t *)cpkt;
    tr_set_now(now);
    if (end < l4 + 20)
        return TR_E_TRUNCATED;
    const uint8_t *ip = pkt + l3, *tcp = pkt + l4;
    size_t seglen = end - l4, thl = (size_t)(tcp[12] >> 4) * 4;
    if (thl < 20 || thl > seglen)
        return TR_E_OFFSET;
    int v6 = (ip[0] >> 4) == 6;
    if (seglen > 0xffff)
        return TR_E_TRUNCATED;
    uint8_t *k = key;
    *k++ = v6 ? 6 : 4;
    memcpy(k, v6 ? ip + 8 : ip + 12, v6 ? 16 : 4);
    k += v6 ? 16 : 4;
    memcpy(k, tcp, 2);
    k += 2;
    memcpy(k, v6 ? ip + 24 : ip + 16, v6 ? 16 : 4);
    k += v6 ? 16 : 4;
    memcpy(k, tcp + 2, 2);
    k += 2;
    *keylen = (size_t)(k - key);
    if (rd16(tcp) == 0 || rd16(tcp + 2) == 0)
        return TR_E_ADDRESS;
    if (!(flags & (TR_IN_CSUM_VALID | TR_IN_CSUM_PARTIAL))) {
        if (fold(sum_bytes(tcp, seglen, pseudo(ip, v6, (uint32_t)seglen))) != 0xffff)
            return TR_E_CHECKSUM;
    }
    if (thl > 20 && !options_ok(tcp, thl))
        return TR_E_OPTIONS;
    if (!(flags & TR_IN_FORCE) && (tcp[13] & (TCP_SYN | TCP_ACK | TCP_RST)) == TCP_SYN &&
        !pcb_exists(key, *keylen))
        return TR_NEW_SYN;
    if ((tcp[13] & TCP_SYN) && !(flags & TR_IN_FORCE)) {
        /* lwIP 2.1.3 takes a SYN inside an established connection and can corrupt its
           out-of-order queue (bug #56397; upstream now accepts SYN only while
           handshaking).  Only a plain SYN retransmission to a SYN-RCVD pcb goes in. */
        struct tcp_pcb *pcb = find_pcb(tcp_active_pcbs, key, *keylen);
        if (pcb != NULL && (pcb->state != SYN_RCVD || (tcp[13] & (TCP_SYN | TCP_ACK)) != TCP_SYN))
            return TR_E_SYN;
    }
    /* Never hand lwIP bytes beyond its receive window's right edge.  lwIP 2.1.3 trims such
       a segment when it queues it out of order, but a longer segment with the same
       sequence number (a retransmission cut differently, as GRO super-segments are)
       later replaces the trimmed one untrimmed, and dequeuing it trips the assertion
       "tcp_receive: ooseq tcplen > rcv_wnd" (lwIP bug #56397, fixed after 2.1.3).  The
       right edge never moves left, so clipping here keeps every queued byte in window. */
    size_t keep = seglen;
    int fix_csum = flags & TR_IN_CSUM_PARTIAL;
    if (seglen > thl && !(tcp[13] & TCP_SYN)) {
        struct tcp_pcb *pcb = find_pcb(tcp_active_pcbs, key, *keylen);
        if (pcb != NULL && pcb->state >= ESTABLISHED) {
            uint32_t seq = rd32(tcp + 4), right = pcb->rcv_nxt + pcb->rcv_wnd;
            uint32_t len = (uint32_t)(seglen - thl);
            if (flags & TR_IN_TIGHT) {
                /* Python checked this segment against the room left; lwIP must not add its
                   out-of-order queue on delivery (that data was never acknowledged) */
                if ((int32_t)(seq - pcb->rcv_nxt) > 0)
                    return TR_E_BUDGET;
#if TCP_QUEUE_OOSEQ
                if (pcb->ooseq != NULL)
                    tcp_free_ooseq(pcb);
#endif
            }
            if ((int32_t)(seq + len - right) > 0 && (int32_t)(right - seq) > 0) {
                keep = thl + (right - seq);
                fix_csum = 1;
                stats.segs_clipped++;
            }
        }
    }
    struct pbuf *p = pbuf_alloc(PBUF_RAW, (u16_t)keep, PBUF_RAM);
    if (p == NULL)
        return TR_E_NOMEM;
    memcpy(p->payload, tcp, keep);
    if (keep < seglen)
        ((uint8_t *)p->payload)[13] &= (uint8_t)~TCP_FIN; /* the FIN lay beyond the window */
    seglen = keep;
    if (fix_csum) {
        uint8_t *t = p->payload;
        t[16] = t[17] = 0;
        uint16_t c = (uint16_t)~fold(sum_bytes(t, seglen, pseudo(ip, v6, (uint32_t)seglen)));
        memcpy(t + 16, &c, 2);
    }
    ip_data.current_netif = &tr_netif;
    ip_data.current_input_netif = &tr_netif;
    if (v6) {
        ip_data.current_ip4_header = NULL;
        ip_data.current_ip6_header = (struct ip6_hdr *)(uintptr_t)ip;
        set_addr(&ip_data.current_iphdr_src, ip + 8, 1);
        set_addr(&ip_data.current_iphdr_dest, ip + 24, 1);
    } else {
        ip_data.current_ip4_header = (struct ip_hdr *)(uintptr_t)ip;
        ip_data.current_ip6_header = NULL;
        set_addr(&ip_data.current_iphdr_src, ip + 12, 0);
        set_addr(&ip_data.current_iphdr_dest, ip + 16, 0);
    }
    ip_data.current_ip_header_tot_len = (u16_t)(l4 - l3);
    stats.segs_in++;
    tcp_input(p, &tr_netif);
    memset(&ip_data, 0, sizeof ip_data);
    return ev_len ? TR_OK_EVENTS : TR_OK;
}

/* --- app operations -------------------------------------------------------------------- */

static void recved(struct tcp_pcb *pcb, size_t n) {
    while (pcb != NULL && n > 0) { /* tcp_recved takes a u16 length */
        size_t step = n > 0xffff ? 0xffff : n;
        tcp_recved(pcb, (u16_t)step);
        n -= step;
    }
}

static size_t tr_read(struct tr_conn *c, uint8_t *dst, size_t max, double now) {
    tr_set_now(now);
    size_t n = c->rx_len < max ? c->rx_len : max;
    if (n == 0)
        return 0;
    size_t done = 0;
    while (done < n) { /* pbuf_copy_partial takes a u16 length */
        size_t step = n - done > 0xffff ? 0xffff : n - done;
        pbuf_copy_partial(c->rx, dst + done, (u16_t)step, (u16_t)0);
        c->rx = pbuf_free_header(c->rx, (u16_t)step);
        done += step;
    }
    c->rx_len -= (uint32_t)n;
    stats.rx_bytes -= n;
    size_t give = n;
    if (c->withhold > 0) {
        size_t keep = give < c->withhold ? give : c->withhold;
        give -= keep;
        c->withhold -= (uint32_t)keep;
    }
    recved(c->pcb, give);
    return n;
}

/* Take all of data; returns 1 while below the high-water mark, 0 above (WRITABLE
   follows), -1 if the connection cannot send any more. */
static int tr_write(struct tr_conn *c, const char *data, size_t len, double now) {
    tr_set_now(now);
    if (c->pcb == NULL || c->shut_out || c->shut_pending || c->closed)
        return -1;
    if (c->sq_head + c->sq_len + len > c->sq_cap) {
        if (c->sq_head > 0) {
            memmove(c->sq, c->sq + c->sq_head, c->sq_len);
            c->sq_head = 0;
        }
        if (c->sq_len + len > c->sq_cap) {
            size_t cap = c->sq_cap ? c->sq_cap : 16384;
            while (cap < c->sq_len + len)
                cap *= 2;
            uint8_t *b = realloc(c->sq, cap);
            if (b == NULL)
                return -1;
            c->sq = b;
            c->sq_cap = cap;
        }
    }
    memcpy(c->sq + c->sq_head + c->sq_len, data, len);
    c->sq_len += len;
    push_sq(c);
    if (buffered(c) >= send_high_water) {
        c->want_write = 1;
        return 0;
    }
    return 1;
}

static int tr_writable(struct tr_conn *c) {
    if (c->pcb == NULL || c->closed || buffered(c) < send_high_water)
        return 1;
    c->want_write = 1;
    return 0;
}

static void tr_shutdown(struct tr_conn *c, double now) {
    tr_set_now(now);
    if (c->shut_out || c->shut_pending || c->pcb == NULL)
        return;
    c->shut_pending = 1;
    push_sq(c);
    maybe_finish(c);
}

static void tr_abort(struct tr_conn *c, double now) {
    tr_set_now(now);
    struct tcp_pcb *pcb = c->pcb;
    c->want_read = c->want_write = 0;
    if (pcb != NULL) {
        tcp_arg(pcb, NULL);
        tcp_sent(pcb, NULL);
        tcp_err(pcb, NULL);
        tcp_recv(pcb, NULL);
        c->pcb = NULL;
        tcp_abort(pcb);
    }
    c->closed = 1;
    if (c->err == 0)
        c->err = ERR_ABRT;
}

static void conn_free(struct tr_conn *c) {
    purge_events(c);
    stats.rx_bytes -= c->rx_len;
    if (c->rx != NULL)
        pbuf_free(c->rx);
    free(c->sq);
    stats.conns_live--;
    free(c);
}

/* Python lets go of c.  abort: RST now.  Otherwise a graceful close: unread bytes are
   dropped, later ones acknowledged and dropped, the FIN follows the queued bytes, and
   c is freed once lwIP has it all. */
static void tr_release(struct tr_conn *c, int abort_it, double now) {
    tr_set_now(now);
    c->want_read = c->want_write = 0;
    if (abort_it || c->closed) {
        tr_abort(c, now);
        conn_free(c);
        return;
    }
    if (c->rx != NULL) {
        recved(c->pcb, c->rx_len);
        stats.rx_bytes -= c->rx_len;
        pbuf_free(c->rx);
        c->rx = NULL;
        c->rx_len = 0;
    }
    c->discard = 1;
    c->released = 1;
    purge_events(c);
    if (c->pcb == NULL) {
        conn_free(c);
        return;
    }
    if (!c->shut_out && !c->shut_pending)
        c->shut_pending = 1;
    push_sq(c);
    if (c->fin_in && c->shut_out)
        detach(c); /* frees c */
}

/* RST answering a SYN we will not take (lazy refusal, flow limit). */
static void tr_refuse(const char *pkt, size_t l3, size_t l4, double now) {
    tr_set_now(now);
    const uint8_t *ip = (const uint8_t *)pkt + l3, *tcp = (const uint8_t *)pkt + l4;
    int v6 = (ip[0] >> 4) == 6;
    ip_addr_t src, dst;
    set_addr(&src, v6 ? ip + 8 : ip + 12, v6);
    set_addr(&dst, v6 ? ip + 24 : ip + 16, v6);
    tcp_rst(NULL, 0, rd32(tcp + 4) + 1, &dst, &src, rd16(tcp + 2), rd16(tcp));
}

/* End a connection lwIP is still handshaking (SYN-RCVD, no tr_conn yet): with a RST, or
   silently (rst 0: an evicted handshake). */
static void tr_abort_key(const uint8_t *key, size_t keylen, int rst, double now) {
    tr_set_now(now);
    uint8_t k[37];
    for (struct tcp_pcb *pcb = tcp_active_pcbs; pcb != NULL; pcb = pcb->next) {
        size_t n = make_key(k, &pcb->remote_ip, pcb->remote_port, &pcb->local_ip, pcb->local_port);
        if (n == keylen && memcmp(k, key, n) == 0 && pcb->callback_arg == NULL) {
            tcp_abandon(pcb, rst);
            return;
        }
    }
}

/* --- timers and lifecycle -------------------------------------------------------------- */

static void tr_trim_time_wait(uint32_t max_ticks) {
    struct tcp_pcb *pcb = tcp_tw_pcbs;
    while (pcb != NULL) {
        struct tcp_pcb *next = pcb->next;
        if ((uint32_t)(tcp_ticks - pcb->tmr) > max_ticks)
            tcp_abort(pcb);
        pcb = next;
    }
}

/* Reset connections that saw no segment for idle_ticks (their err callback reports it). */
static void tr_expire_idle(void) {
    struct tcp_pcb *pcb = tcp_active_pcbs;
    while (pcb != NULL) {
        struct tcp_pcb *next = pcb->next;
        if ((uint32_t)(tcp_ticks - pcb->tmr) > idle_ticks)
            tcp_abort(pcb);
        pcb = next;
    }
}

/* Run due lwIP timers; returns milliseconds to the next one (0xffffffff: none). */
static uint32_t tr_timers(double now, uint32_t time_wait_ticks) {
    tr_set_now(now);
    sys_check_timeouts();
    tr_trim_time_wait(time_wait_ticks);
    tr_expire_idle();
    return sys_timeouts_sleeptime();
}

static int tr_tcp_busy(void) { return tcp_active_pcbs != NULL || tcp_tw_pcbs != NULL; }

/* Milliseconds from the last `now` to lwIP's next timer (0xffffffff: none). */
static uint32_t tr_sleeptime(void) { return sys_timeouts_sleeptime(); }

static int tr_setup(double now, uint16_t mtu, int vnet, int gso, uint32_t mss_v4, uint32_t mss_v6,
                    size_t high_water, uint32_t idle, size_t rx_buffer) {
    tr_set_now(now);
    send_high_water = high_water;
    withhold_bytes = rx_buffer < TCP_WND ? (uint32_t)(TCP_WND - rx_buffer) : 0;
    idle_ticks = idle;
    if (!tr_ready) {
        lwip_init();
        ip4_addr_t addr, mask, gw;
        IP4_ADDR(&addr, 0, 0, 0, 1); /* never a TUN address; non-zero so ip4_route uses it */
        IP4_ADDR(&mask, 255, 255, 255, 255);
        IP4_ADDR(&gw, 0, 0, 0, 0);
        if (netif_add(&tr_netif, &addr, &mask, &gw, NULL, tr_netif_init, tr_netif_input) == NULL)
            return -1;
        netif_set_default(&tr_netif);
        netif_set_link_up(&tr_netif);
        netif_set_up(&tr_netif);
        tr_ready = 1;
    } else {
        sys_restart_timeouts(); /* a new core may count time from another origin */
    }
    tr_netif.mtu = mtu;
    tr_netif.mtu6 = mtu;
    out_vnet = vnet;
    out_gso = gso && vnet;
    out_mss_v4 = mss_v4;
    out_mss_v6 = mss_v6;
    out_n = out_len = 0;
    last_open = 0;
    ev_len = 0;
    return 0;
}

/* Reset every pcb lwIP still has (RST for live ones) and close the listeners. */
static void tr_reset_all(double now) {
    tr_set_now(now);
    while (tcp_active_pcbs != NULL)
        tcp_abort(tcp_active_pcbs); /* err callbacks report CLOSED for ours */
    while (tcp_tw_pcbs != NULL)
        tcp_abort(tcp_tw_pcbs);
    if (listeners != NULL) {
        for (int i = 0; i < 65536; i++) {
            if (listeners[i] != NULL) {
                tcp_close(listeners[i]);
                listeners[i] = NULL;
            }
        }
    }
}

static int tr_clock_hooked(void) {
    tr_clock_called = 0;
    uint32_t saved = tr_now_ms;
    tr_now_ms = 123456789u;
    uint32_t got = sys_timeouts_sleeptime(); /* calls sys_now() through lwIP */
    (void)got;
    tr_now_ms = saved;
    return tr_clock_called;
}

static void tr_counts(size_t *out) {
    size_t n = 0;
    for (struct tcp_pcb *p = tcp_active_pcbs; p; p = p->next)
        n++;
    out[0] = n;
    n = 0;
    for (struct tcp_pcb *p = tcp_tw_pcbs; p; p = p->next)
        n++;
    out[1] = n;
    n = 0;
    for (struct tcp_pcb_listen *p = tcp_listen_pcbs.listen_pcbs; p; p = p->next)
        n++;
    out[2] = n;
    n = 0;
    for (struct tcp_pcb *p = tcp_bound_pcbs; p; p = p->next)
        n++;
    out[3] = n;
    out[4] = (size_t)stats.conns_live;
}

static struct tr_stats *tr_stats_ptr(void) { return &stats; }
