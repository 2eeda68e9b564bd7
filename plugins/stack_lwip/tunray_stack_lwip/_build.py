"""cffi (API mode) build of the lwIP glue: ``python -m tunray_stack_lwip._build`` or at pip install.

The glue (``glue.c``) is compiled against Debian's ``/usr/include/lwip`` headers, so
every lwIP struct layout it touches (``ip_data``, ``tcp_pcb``, ``netif``) comes from
those headers at build time; nothing is hard-coded.  The module links ``liblwip.so.0``.
"""

from __future__ import annotations

import os
import pathlib

import cffi  # type: ignore[import-untyped]

HERE = pathlib.Path(__file__).parent
LWIP_INCLUDE = os.environ.get("TUNRAY_LWIP_INCLUDE", "/usr/include/lwip")
HEADER = pathlib.Path(LWIP_INCLUDE) / "lwip" / "tcp.h"

CDEF = """
#define TR_EV_ACCEPTED 1
#define TR_EV_READABLE 2
#define TR_EV_WRITABLE 3
#define TR_EV_EOF 4
#define TR_EV_CLOSED 5
#define TR_EV_RESET 6
#define TR_IN_FORCE 1
#define TR_IN_CSUM_PARTIAL 2
#define TR_IN_CSUM_VALID 4
#define TR_OK 0
#define TR_NEW_SYN 1
#define TR_OK_EVENTS 2
#define TR_E_TRUNCATED -1
#define TR_E_OFFSET -2
#define TR_E_CHECKSUM -3
#define TR_E_NOMEM -4
#define TR_E_ADDRESS -5
#define TR_E_OPTIONS -6
#define TR_E_SYN -7
#define TR_E_BUDGET -8
#define TR_IN_TIGHT 8

struct tr_conn {
    uint32_t rx_len;
    uint8_t key[37];
    uint8_t keylen;
    uint8_t fin_in;
    uint8_t closed;
    int8_t err;
    uint8_t want_read;
    int64_t handle;
    ...;
};
struct tr_event { int32_t kind; struct tr_conn *conn; };
struct tr_stats {
    uint64_t conns_live, pbufs_in, segs_in, pkts_out, pkts_dropped_out, gso_merged, mss_rewritten, segs_clipped;
    uint64_t rx_bytes;
};

int tr_setup(double now, uint16_t mtu, int vnet, int gso, uint32_t mss_v4, uint32_t mss_v6,
             size_t high_water, uint32_t idle, size_t rx_buffer);
int tr_listen(uint16_t port);
int tr_input(const char *pkt, size_t l3, size_t l4, size_t end, int flags, double now,
             uint8_t *key, size_t *keylen);
struct tr_event *tr_events(size_t *n);
uint8_t *tr_output(uint32_t **recs, size_t *n);
size_t tr_read(struct tr_conn *c, uint8_t *dst, size_t max, double now);
int tr_write(struct tr_conn *c, const char *data, size_t len, double now);
int tr_writable(struct tr_conn *c);
void tr_shutdown(struct tr_conn *c, double now);
void tr_release(struct tr_conn *c, int abort_it, double now);
void tr_refuse(const char *pkt, size_t l3, size_t l4, double now);
void tr_abort_key(const uint8_t *key, size_t keylen, int rst, double now);
uint32_t tr_timers(double now, uint32_t time_wait_ticks);
int tr_tcp_busy(void);
uint32_t tr_sleeptime(void);
void tr_reset_all(double now);
int tr_clock_hooked(void);
void tr_counts(size_t *out);
struct tr_stats *tr_stats_ptr(void);
"""

ffibuilder = cffi.FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "tunray_stack_lwip._lwip",
    (HERE / "glue.c").read_text(),
    include_dirs=[LWIP_INCLUDE],
    libraries=["lwip"],
    extra_compile_args=["-O2", "-Wno-unused-function", "-Wno-address-of-packed-member"],
)


def available() -> bool:
    """True if the lwIP headers are installed (Debian ``liblwip-dev``)."""
    return HEADER.exists()


if __name__ == "__main__":
    ffibuilder.compile(tmpdir=str(HERE.parent), verbose=True)
