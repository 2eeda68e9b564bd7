"""cffi (API mode) build of the fast path (``fastpath.c``): at pip install, or ``python -m tunray_stack_system._build``.

The C needs nothing but libc.  Without a compiler (or the Python headers) ``setup.py``
skips it: the plugin installs anyway and the stack runs its pure-Python fast path
(:func:`tunray_stack_system.fastpath.load` returns None).
"""

from __future__ import annotations

import pathlib

import cffi  # type: ignore[import-untyped]

HERE = pathlib.Path(__file__).parent

CDEF = """
#define SF_AGAIN 0
#define SF_BATCH 1
#define SF_SLOW 2
#define SF_WRITE 3
#define SF_EOF 4
#define SF_ERROR 5
#define SF_NOTE_ESTABLISHED 1
#define SF_NOTE_APP 2
#define SF_NOTE_KERNEL 3

struct sf_entry { double last; ...; };
struct sf_note { int64_t handle; int32_t kind; int32_t flags; };
struct sf_table;

struct sf_table *sf_new(uint32_t max_entries, const uint8_t *bad_flags, int vnet, uint32_t verify_max,
                        uint32_t seed);
void sf_side(struct sf_table *t, int version, const uint8_t *reply, size_t len);
void sf_destroy(struct sf_table *t);
struct sf_entry *sf_add(struct sf_table *t, int64_t handle, int version, const uint8_t *key, uint16_t port,
                        const uint8_t *fwd_addr, const uint8_t *fwd_ports, uint32_t fwd_ip, uint32_t fwd_l4,
                        const uint8_t *back_addr, const uint8_t *back_ports, uint32_t back_ip, uint32_t back_l4,
                        int half_open, double now);
void sf_remove(struct sf_table *t, struct sf_entry *e);
void sf_established(struct sf_entry *e);
size_t sf_count(const struct sf_table *t);
struct sf_note *sf_notes(struct sf_table *t, size_t *n);
int sf_packet(struct sf_table *t, uint8_t *p, size_t n, double now);
int sf_pump(struct sf_table *t, int fd, uint8_t *buf, size_t cap, int batch, double now, size_t *len, int *err,
            int *done, size_t *notes);
"""

ffibuilder = cffi.FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "tunray_stack_system._fastpath",
    (HERE / "fastpath.c").read_text(),
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=str(HERE.parent), verbose=True)
