/* What an aarch64 Linux (or qemu-aarch64 -cpu MODEL) tells a process about its CPU: the HWCAP
 * bits ggml's ARM plugins are scored on, read exactly as ggml_feats_get_arch64_runtime()
 * (ggml/src/ggml-feats.h) reads them. Prints the present ones among:
 * dotprod fp16 sve i8mm sve2 sme. tests/test_aarch64.py derives from it which plugin ggml must
 * pick under each -cpu model. */
#include <stdio.h>
#include <sys/auxv.h>

#define BIT(n) (1UL << (n))

int main(void) {
    unsigned long h = getauxval(AT_HWCAP), h2 = getauxval(AT_HWCAP2);
    if (h & BIT(20)) printf("dotprod ");                     /* HWCAP_ASIMDDP */
    if ((h & BIT(9)) && (h & BIT(10))) printf("fp16 ");      /* HWCAP_FPHP and HWCAP_ASIMDHP */
    if (h & BIT(22)) printf("sve ");                         /* HWCAP_SVE */
    if (h2 & BIT(13)) printf("i8mm ");                       /* HWCAP2_I8MM */
    if (h2 & BIT(1)) printf("sve2 ");                        /* HWCAP2_SVE2 */
    if (h2 & BIT(23)) printf("sme ");                        /* HWCAP2_SME */
    printf("\n");
    return 0;
}
