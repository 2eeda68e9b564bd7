/* Memory-safety fuzz of fastpath.c under AddressSanitizer and UBSan (test_stacksys_fast.py builds and runs it).
 *
 * Random packets of every length up to 140 bytes, each in its own exact-size heap block (so a read past
 * the packet is caught), often shaped as IPv4/IPv6 TCP with a valid IPv4 header checksum and the
 * 4-tuple or listener addresses of a live entry, with and without a virtio header. */
#include "fastpath.c"
#include <stdio.h>

static uint64_t rng = 88172645463325252ull;
static uint32_t rnd(void) { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return (uint32_t)rng; }

int main(int argc, char **argv)
{
    uint8_t bad[256] = {0};
    bad[0x03] = 1;
    long iters = argc > 1 ? atol(argv[1]) : 200000;
    long took = 0;
    for (int vnet = 0; vnet < 2; vnet++) {
        struct sf_table *t = sf_new(64, bad, vnet, 512, 7);
        uint8_t r4[10] = {10, 9, 0, 1, 10, 9, 0, 2, 0x9e, 0x14};
        uint8_t r6[34] = {0};
        r6[0] = 0xfd; r6[15] = 1; r6[16] = 0xfd; r6[31] = 2; r6[32] = 0x9e; r6[33] = 0x14;
        sf_side(t, 4, r4, 10);
        sf_side(t, 6, r6, 34);
        uint8_t key4[12] = {10, 9, 0, 1, 198, 51, 100, 7, 0x15, 0xb3, 0x01, 0xbb};
        uint8_t key6[36] = {0};
        key6[0] = 0xfd; key6[15] = 1; key6[16] = 0x20; key6[31] = 7; key6[32] = 0x15; key6[33] = 0xb3; key6[35] = 0xbb;
        uint8_t z[32] = {0}, ports[4] = {0x27, 0x10, 0x9e, 0x14};
        struct sf_entry *e4 = sf_add(t, -1, 4, key4, 10000, z, ports, 1, 2, z, ports, 3, 4, 1, 0.0);
        struct sf_entry *e6 = sf_add(t, -2, 6, key6, 10000, z, ports, 1, 2, z, ports, 3, 4, 0, 0.0);
        for (long i = 0; i < iters; i++) {
            size_t n = rnd() % 140;
            uint8_t *p = malloc(n ? n : 1);
            for (size_t j = 0; j < n; j++) p[j] = (uint8_t)rnd();
            size_t ip = vnet ? 10 : 0;
            int v6 = rnd() & 1;
            if (n > ip + 10) {
                if (!v6) {
                    p[ip] = 0x45; if (n > ip + 9) p[ip + 9] = 6;
                    if (n > ip + 3) { size_t tot = n - ip - (rnd() % 3); p[ip + 2] = (uint8_t)(tot >> 8); p[ip + 3] = (uint8_t)tot; }
                    if (n > ip + 7) { p[ip + 6] = 0; p[ip + 7] = 0; }
                    if (rnd() & 1 && n >= ip + 24) { if (rnd() & 1) memcpy(p + ip + 12, key4, 12); else memcpy(p + ip + 12, r4, 10); }
                } else {
                    p[ip] = 0x60; p[ip + 6] = 6;
                    size_t pl = n - ip - 40 - (rnd() % 3);
                    p[ip + 4] = (uint8_t)(pl >> 8); p[ip + 5] = (uint8_t)pl;
                    if (rnd() & 1 && n >= ip + 44) { if (rnd() & 1) memcpy(p + ip + 8, key6, 36); else memcpy(p + ip + 8, r6, 34); }
                }
                if (vnet) p[0] = rnd() & 3;
                if (!v6 && n >= ip + 20 && (rnd() & 3)) {
                    p[ip + 10] = p[ip + 11] = 0;
                    uint32_t s = 0;
                    for (int k = 0; k < 20; k += 2) s += ((uint32_t)p[ip + k] << 8) | p[ip + k + 1];
                    while (s >> 16) s = (s & 0xFFFF) + (s >> 16);
                    s = ~s & 0xFFFF;
                    p[ip + 10] = (uint8_t)(s >> 8); p[ip + 11] = (uint8_t)s;
                }
            }
            took += sf_packet(t, p, n, (double)i);
            size_t nn;
            sf_notes(t, &nn);
            free(p);
        }
        sf_remove(t, e4);
        sf_remove(t, e6);
        sf_destroy(t);
    }
    printf("ok %ld rewritten\n", took);
    return 0;
}
