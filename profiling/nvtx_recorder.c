/* NVTX v3 injection library: records ranges and marks of any NVTX user to one log per process.
 *
 * Load it with NVTX_INJECTION64_PATH=/path/libnvtx_recorder.so; every NVTX v3 client (the `nvtx`
 * Python package, CUDA builds of torch, C code) then calls InitializeInjectionNvtx2 on its first
 * NVTX call. We fill the CORE (1) and CORE2 (5) callback slots: push/pop, start/end and marks,
 * with or without a domain, plus DomainCreateA and DomainRegisterStringA (the `nvtx` package sends
 * every message as a registered string).
 *
 * Log: $HPCDIFF_NVTX_LOG_DIR/nvtx-<pid>.tsv (default directory "."), written with write(2) from a
 * per-process buffer (flushed when a thread closes its outermost range, when full and at exit; a
 * forked child starts its own file). Lines:
 *   # pid <pid> rank <rank or -1> ppid <ppid>
 *   <t_ns> <tid> push|pop|mark|start|end <id> <domain> <message>     (tab separated)
 * t_ns is CLOCK_MONOTONIC; id is the start/end range id (0 otherwise); pops carry no name, so
 * nesting and balance are checked by the reader (profiling/summarize.py).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define NVTX_NO_IMPL
#include "nvToolsExt.h"

#define BUF_SIZE (1 << 16)

struct domain { char *name; };  /* what an nvtxDomainHandle_t points to here */

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static char buf[BUF_SIZE];
static size_t used;
static int fd = -1;
static uint64_t next_range_id = 1;

static void flush_locked(void)
{
    size_t off = 0;
    while (fd >= 0 && off < used) {
        ssize_t n = write(fd, buf + off, used - off);
        if (n <= 0) break;
        off += (size_t)n;
    }
    used = 0;
}

static const char *env_rank(void)
{
    static const char *keys[] = {"RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "PMI_RANK"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        const char *v = getenv(keys[i]);
        if (v && *v) return v;
    }
    return "-1";
}

static void open_log(void)  /* called with the lock held (or before threads exist) */
{
    const char *dir = getenv("HPCDIFF_NVTX_LOG_DIR");
    char path[4096];
    snprintf(path, sizeof path, "%s/nvtx-%d.tsv", dir && *dir ? dir : ".", (int)getpid());
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        fprintf(stderr, "nvtx_recorder: cannot open %s\n", path);
        return;
    }
    used = (size_t)snprintf(buf, BUF_SIZE, "# pid %d rank %s ppid %d\n", (int)getpid(),
                            env_rank(), (int)getppid());
    flush_locked();  /* the header is there even if nothing else is */
}

static __thread int depth;  /* open push/pop ranges of this thread */

/* Log one event; the buffer is written out whenever a thread closes its outermost range, so
 * a process that leaves through _exit or a signal keeps every finished top-level range. */
static void emit(const char *event, uint64_t id, const struct domain *d, const char *msg)
{
    struct timespec ts;
    char line[1024];
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int n = snprintf(line, sizeof line, "%lld\t%ld\t%s\t%llu\t%s\t%s\n",
                     (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec, (long)syscall(SYS_gettid),
                     event, (unsigned long long)id, d ? d->name : "", msg ? msg : "");
    if (n < 0) return;
    if ((size_t)n >= sizeof line) n = sizeof line - 1;
    for (int i = 0; i < n - 1; i++)  /* keep one event per line */
        if (line[i] == '\n') line[i] = ' ';
    if (event[0] == 'p') depth += event[1] == 'u' ? 1 : -1;  /* push / pop */
    pthread_mutex_lock(&lock);
    if (used + (size_t)n > BUF_SIZE) flush_locked();
    memcpy(buf + used, line, (size_t)n);
    used += (size_t)n;
    if (depth <= 0) flush_locked();
    pthread_mutex_unlock(&lock);
}

static const char *message(const nvtxEventAttributes_t *a)
{
    if (!a) return "";
    switch (a->messageType) {
    case NVTX_MESSAGE_TYPE_ASCII: return a->message.ascii;
    case NVTX_MESSAGE_TYPE_REGISTERED: return (const char *)a->message.registered;
    case NVTX_MESSAGE_TYPE_UNICODE: return "<unicode>";
    default: return "";
    }
}

static uint64_t new_id(void) { return __atomic_fetch_add(&next_range_id, 1, __ATOMIC_RELAXED); }

/* CORE module: the default (unnamed) domain. */
static void mark_ex(const nvtxEventAttributes_t *a) { emit("mark", 0, NULL, message(a)); }
static void mark_a(const char *m) { emit("mark", 0, NULL, m); }
static int push_ex(const nvtxEventAttributes_t *a) { emit("push", 0, NULL, message(a)); return 0; }
static int push_a(const char *m) { emit("push", 0, NULL, m); return 0; }
static int pop(void) { emit("pop", 0, NULL, ""); return 0; }
static nvtxRangeId_t start_ex(const nvtxEventAttributes_t *a)
{
    uint64_t id = new_id();
    emit("start", id, NULL, message(a));
    return id;
}
static nvtxRangeId_t start_a(const char *m)
{
    uint64_t id = new_id();
    emit("start", id, NULL, m);
    return id;
}
static void end(nvtxRangeId_t id) { emit("end", id, NULL, ""); }

/* CORE2 module: named domains and registered strings. */
static void d_mark(nvtxDomainHandle_t d, const nvtxEventAttributes_t *a)
{
    emit("mark", 0, (struct domain *)d, message(a));
}
static int d_push(nvtxDomainHandle_t d, const nvtxEventAttributes_t *a)
{
    emit("push", 0, (struct domain *)d, message(a));
    return 0;
}
static int d_pop(nvtxDomainHandle_t d) { emit("pop", 0, (struct domain *)d, ""); return 0; }
static nvtxRangeId_t d_start(nvtxDomainHandle_t d, const nvtxEventAttributes_t *a)
{
    uint64_t id = new_id();
    emit("start", id, (struct domain *)d, message(a));
    return id;
}
static void d_end(nvtxDomainHandle_t d, nvtxRangeId_t id)
{
    emit("end", id, (struct domain *)d, "");
}
static nvtxDomainHandle_t d_create(const char *name)
{
    struct domain *d = malloc(sizeof *d);
    if (!d) return NULL;
    d->name = strdup(name ? name : "");
    return (nvtxDomainHandle_t)d;
}
static void d_destroy(nvtxDomainHandle_t d) { (void)d; }  /* ranges may still name it */
static nvtxStringHandle_t d_register(nvtxDomainHandle_t d, const char *s)
{
    (void)d;
    return (nvtxStringHandle_t)strdup(s ? s : "");  /* read back in message() */
}

static void at_exit(void)
{
    pthread_mutex_lock(&lock);
    flush_locked();
    pthread_mutex_unlock(&lock);
}
static void before_fork(void) { pthread_mutex_lock(&lock); flush_locked(); }
static void after_fork_parent(void) { pthread_mutex_unlock(&lock); }
static void after_fork_child(void)
{
    pthread_mutex_init(&lock, NULL);
    depth = 0;  /* ranges the parent has open are the parent's */
    if (fd >= 0) close(fd);
    used = 0;
    open_log();
}

static void fill(NvtxFunctionTable table, unsigned int size, unsigned int slot,
                 NvtxFunctionPointer f)
{
    if (slot < size && table[slot]) *table[slot] = f;
}

/* Compat mode: hand the whole NVTX session to another tool (e.g. Nsight Systems 2022.4) while
 * this library exports no InitializeInjectionNvtxExtension, so nvtxDomainIsEnabled says "yes" and
 * the `nvtx` package >= 0.2.12 keeps its real domains (see profiling/README.md). */
static int forward_to(const char *path, NvtxGetExportTableFunc_t get)
{
    void *lib = dlopen(path, RTLD_NOW | RTLD_GLOBAL);
    NvtxInitializeInjectionNvtxFunc_t init = lib ? (NvtxInitializeInjectionNvtxFunc_t)dlsym(
        lib, "InitializeInjectionNvtx2") : NULL;
    if (!init) {
        fprintf(stderr, "nvtx_recorder: cannot forward to %s: %s\n", path, dlerror());
        return 0;
    }
    return init(get);
}

#define FN(f) ((NvtxFunctionPointer)(f))

__attribute__((visibility("default"))) int InitializeInjectionNvtx2(NvtxGetExportTableFunc_t get)
{
    const NvtxExportTableCallbacks *cb = get(NVTX_ETID_CALLBACKS);
    NvtxFunctionTable t;
    unsigned int n;
    const char *forward = getenv("HPCDIFF_NVTX_FORWARD");
    if (forward && *forward) return forward_to(forward, get);
    if (!cb || !cb->GetModuleFunctionTable) return 0;
    if (!cb->GetModuleFunctionTable(NVTX_CB_MODULE_CORE, &t, &n)) return 0;
    fill(t, n, NVTX_CBID_CORE_MarkEx, FN(mark_ex));
    fill(t, n, NVTX_CBID_CORE_MarkA, FN(mark_a));
    fill(t, n, NVTX_CBID_CORE_RangeStartEx, FN(start_ex));
    fill(t, n, NVTX_CBID_CORE_RangeStartA, FN(start_a));
    fill(t, n, NVTX_CBID_CORE_RangeEnd, FN(end));
    fill(t, n, NVTX_CBID_CORE_RangePushEx, FN(push_ex));
    fill(t, n, NVTX_CBID_CORE_RangePushA, FN(push_a));
    fill(t, n, NVTX_CBID_CORE_RangePop, FN(pop));
    if (!cb->GetModuleFunctionTable(NVTX_CB_MODULE_CORE2, &t, &n)) return 0;
    fill(t, n, NVTX_CBID_CORE2_DomainMarkEx, FN(d_mark));
    fill(t, n, NVTX_CBID_CORE2_DomainRangeStartEx, FN(d_start));
    fill(t, n, NVTX_CBID_CORE2_DomainRangeEnd, FN(d_end));
    fill(t, n, NVTX_CBID_CORE2_DomainRangePushEx, FN(d_push));
    fill(t, n, NVTX_CBID_CORE2_DomainRangePop, FN(d_pop));
    fill(t, n, NVTX_CBID_CORE2_DomainRegisterStringA, FN(d_register));
    fill(t, n, NVTX_CBID_CORE2_DomainCreateA, FN(d_create));
    fill(t, n, NVTX_CBID_CORE2_DomainDestroy, FN(d_destroy));
    pthread_mutex_lock(&lock);
    if (fd < 0) {
        open_log();
        atexit(at_exit);
        pthread_atfork(before_fork, after_fork_parent, after_fork_child);
    }
    pthread_mutex_unlock(&lock);
    return 1;
}
