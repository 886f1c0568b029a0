/*
 * pagetrace: an LD_PRELOAD library that records which pages of a program's
 * own code it runs, in the order it first runs them. scripts/code-layout.py
 * builds it, runs `sluice` under it and turns the pages into the linker's
 * symbol ordering files (cli/layout/).
 *
 * At start the program's executable mappings are made inaccessible; the
 * first jump into a page faults, the handler opens that page again and
 * appends its file offset (8 bytes, little-endian) to
 * $PAGETRACE_OUT/<program>.<pid>. Each page faults once, so the program runs
 * at nearly full speed. Faults outside those mappings get the default action.
 *
 * Environment: PAGETRACE_OUT (directory; unset: do nothing), PAGETRACE_BIN
 * (trace only programs whose path contains it).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE 4096
#define MAX_RANGES 16

struct range {
    uintptr_t start, end, offset;
};

static struct range ranges[MAX_RANGES];
static int range_count;
static int out_fd = -1;

static void on_fault(int sig, siginfo_t *info, void *context) {
    (void)context;
    uintptr_t at = (uintptr_t)info->si_addr;
    for (int i = 0; i < range_count; i++) {
        if (at >= ranges[i].start && at < ranges[i].end) {
            uintptr_t page = at & ~(uintptr_t)(PAGE - 1);
            mprotect((void *)page, PAGE, PROT_READ | PROT_EXEC);
            uint64_t offset = ranges[i].offset + (page - ranges[i].start);
            if (write(out_fd, &offset, sizeof offset) != sizeof offset) {
                /* The trace misses a page; the program goes on. */
            }
            return;
        }
    }
    /* Not ours: fault again with the default action. */
    signal(sig, SIG_DFL);
}

__attribute__((constructor)) static void pagetrace_start(void) {
    const char *dir = getenv("PAGETRACE_OUT");
    if (dir == NULL) return;
    char exe[1024];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) return;
    exe[n] = 0;
    const char *only = getenv("PAGETRACE_BIN");
    if (only != NULL && strstr(exe, only) == NULL) return;
    const char *base = strrchr(exe, '/') ? strrchr(exe, '/') + 1 : exe;
    char path[2048];
    snprintf(path, sizeof path, "%s/%s.%d", dir, base, (int)getpid());
    out_fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0644);
    if (out_fd < 0) return;

    FILE *maps = fopen("/proc/self/maps", "r");
    if (maps == NULL) return;
    char line[2048];
    while (fgets(line, sizeof line, maps) && range_count < MAX_RANGES) {
        unsigned long start, end, offset, inode;
        char perms[8], dev[32], file[1024] = "";
        if (sscanf(line, "%lx-%lx %7s %lx %31s %lu %1023s", &start, &end, perms, &offset, dev, &inode, file) == 7
            && strcmp(perms, "r-xp") == 0 && strcmp(file, exe) == 0) {
            ranges[range_count++] = (struct range){start, end, offset};
        }
    }
    fclose(maps);

    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = on_fault;
    action.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigaction(SIGSEGV, &action, NULL);
    for (int i = 0; i < range_count; i++) {
        mprotect((void *)ranges[i].start, ranges[i].end - ranges[i].start, PROT_NONE);
    }
}
