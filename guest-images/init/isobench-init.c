/*
 * isobench-init: the guest entrypoint shared by every backend.
 *
 * It writes the Jupyter connection file, prepares a writable environment and starts
 * `python3 -Xfrozen_modules=off -m ipykernel_launcher -f FILE`. guest-images/README.md
 * specifies the interface: modes, parameters, markers.
 *
 * Built static (`gcc -static -O2`) so that it needs nothing from the root filesystem before
 * /proc and /dev exist.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/io.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* I/O port the VMM watches for one-byte boot markers. */
#define MARKER_PORT 0x0440

enum marker {
    MARKER_INIT_STARTED = 1,
    MARKER_MOUNTS_DONE = 2,
    MARKER_EXEC_KERNEL = 3,
};

static const char *marker_name(enum marker code)
{
    switch (code) {
    case MARKER_INIT_STARTED:
        return "init_started";
    case MARKER_MOUNTS_DONE:
        return "mounts_done";
    case MARKER_EXEC_KERNEL:
        return "exec_kernel";
    }
    return "unknown";
}

/* Set when this process is the microVM's PID 1: markers then also go to the marker port. */
static int vm_mode;
/* Set once ioperm() granted access to MARKER_PORT. */
static int port_allowed;

static void marker(enum marker code)
{
    char text[64];
    int length;

    if (port_allowed)
        outb((unsigned char)code, MARKER_PORT);
    length = snprintf(text, sizeof(text), "\x1eisobench-marker:%s\x1f", marker_name(code));
    /* One write(2), so that readers of a pipe never see a torn frame. */
    if (write(STDOUT_FILENO, text, (size_t)length) < 0) {
        /* No console: the port marker is all there is. */
    }
}

/* Prints a one-line error; as PID 1 it then reboots the guest, elsewhere it exits with 2. */
static void __attribute__((noreturn, format(printf, 1, 2))) fail(const char *format, ...)
{
    va_list args;

    fputs("isobench-init: error: ", stderr);
    va_start(args, format);
    vfprintf(stderr, format, args);
    va_end(args);
    fputc('\n', stderr);
    fflush(stderr);
    if (vm_mode) {
        sync();
        reboot(RB_AUTOBOOT);
    }
    exit(2);
}

static void mount_or_fail(const char *source, const char *target, const char *type,
                          unsigned long flags, const char *options)
{
    if (mkdir(target, 0755) != 0 && errno != EEXIST)
        fail("cannot create %s: %s", target, strerror(errno));
    if (mount(source, target, type, flags, options) != 0) {
        /* CONFIG_DEVTMPFS_MOUNT has the kernel mount /dev before init starts. */
        if (errno == EBUSY)
            return;
        fail("cannot mount %s on %s: %s", type, target, strerror(errno));
    }
}

/* Opens /dev/console on fds 0-2 when the kernel could not give init a console. */
static void ensure_console(void)
{
    int fd;

    if (fcntl(STDOUT_FILENO, F_GETFD) != -1)
        return;
    fd = open("/dev/console", O_RDWR | O_NOCTTY);
    if (fd < 0)
        return;
    dup2(fd, STDIN_FILENO);
    dup2(fd, STDOUT_FILENO);
    dup2(fd, STDERR_FILENO);
    if (fd > STDERR_FILENO)
        close(fd);
}

/* Brings the loopback interface up; the kernel's IP autoconfiguration only does so with ip=. */
static void loopback_up(void)
{
    struct ifreq request;
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);

    if (fd < 0)
        return;
    memset(&request, 0, sizeof(request));
    strncpy(request.ifr_name, "lo", IFNAMSIZ - 1);
    if (ioctl(fd, SIOCGIFFLAGS, &request) == 0 && !(request.ifr_flags & IFF_UP)) {
        request.ifr_flags |= IFF_UP;
        ioctl(fd, SIOCSIFFLAGS, &request);
    }
    close(fd);
}

static void mount_guest_filesystems(void)
{
    mount_or_fail("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    mount_or_fail("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    mount_or_fail("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
    mount_or_fail("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
    mount_or_fail("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755");
    mount_or_fail("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
}

struct params {
    char ip[INET_ADDRSTRLEN];
    char key[129];
    unsigned ports[5];
    char runtime_dir[256];
};

static const char *const port_names[5] = {"shell", "iopub", "stdin", "control", "hb"};

static void set_ip(struct params *params, const char *origin, const char *value)
{
    struct in_addr address;

    if (strlen(value) >= sizeof(params->ip) || inet_pton(AF_INET, value, &address) != 1)
        fail("invalid %s '%s': expected an IPv4 address such as 0.0.0.0", origin, value);
    strcpy(params->ip, value);
}

static void set_key(struct params *params, const char *origin, const char *value)
{
    size_t length = strlen(value);

    if (length >= sizeof(params->key))
        fail("invalid %s: %zu characters, at most %zu", origin, length, sizeof(params->key) - 1);
    for (size_t i = 0; i < length; i++) {
        if (!strchr("0123456789abcdefABCDEF", value[i]))
            fail("invalid %s '%s': expected hexadecimal digits", origin, value);
    }
    strcpy(params->key, value);
}

static void set_ports(struct params *params, const char *origin, const char *value)
{
    const char *cursor = value;

    for (int i = 0; i < 5; i++) {
        char *end;
        unsigned long port;

        errno = 0;
        port = strtoul(cursor, &end, 10);
        if (end == cursor || errno != 0 || port == 0 || port > 65535)
            fail("invalid %s '%s': expected five ports 1-65535 as S,I,N,C,H", origin, value);
        params->ports[i] = (unsigned)port;
        if (i < 4) {
            if (*end != ',')
                fail("invalid %s '%s': expected five ports 1-65535 as S,I,N,C,H", origin, value);
            cursor = end + 1;
        } else if (*end != '\0') {
            fail("invalid %s '%s': expected five ports 1-65535 as S,I,N,C,H", origin, value);
        }
    }
}

static void set_runtime_dir(struct params *params, const char *value)
{
    if (value[0] != '/' || strlen(value) >= sizeof(params->runtime_dir) - 32)
        fail("invalid ISOBENCH_RUNTIME_DIR '%s': expected an absolute path under 200 bytes",
             value);
    strcpy(params->runtime_dir, value);
}

static void default_params(struct params *params)
{
    static const unsigned defaults[5] = {50001, 50002, 50003, 50004, 50005};

    memset(params, 0, sizeof(*params));
    strcpy(params->ip, "0.0.0.0");
    memcpy(params->ports, defaults, sizeof(defaults));
    strcpy(params->runtime_dir, "/run/isobench");
}

/* Reads isobench.* words from the kernel command line. */
static void params_from_cmdline(struct params *params)
{
    static char line[4096];
    ssize_t length;
    int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);

    if (fd < 0)
        fail("cannot open /proc/cmdline: %s", strerror(errno));
    length = read(fd, line, sizeof(line) - 1);
    close(fd);
    if (length < 0)
        fail("cannot read /proc/cmdline: %s", strerror(errno));
    line[length] = '\0';

    for (char *save = NULL, *word = strtok_r(line, " \t\n", &save); word;
         word = strtok_r(NULL, " \t\n", &save)) {
        if (strncmp(word, "isobench.ip=", 12) == 0)
            set_ip(params, "isobench.ip", word + 12);
        else if (strncmp(word, "isobench.key=", 13) == 0)
            set_key(params, "isobench.key", word + 13);
        else if (strncmp(word, "isobench.ports=", 15) == 0)
            set_ports(params, "isobench.ports", word + 15);
    }
}

static void params_from_environment(struct params *params)
{
    const char *value;

    if ((value = getenv("ISOBENCH_IP")) && *value)
        set_ip(params, "ISOBENCH_IP", value);
    if ((value = getenv("ISOBENCH_KEY")))
        set_key(params, "ISOBENCH_KEY", value);
    if ((value = getenv("ISOBENCH_PORTS")) && *value)
        set_ports(params, "ISOBENCH_PORTS", value);
    if ((value = getenv("ISOBENCH_RUNTIME_DIR")) && *value)
        set_runtime_dir(params, value);
}

static void make_dir(const char *path, mode_t mode)
{
    if (mkdir(path, mode) != 0 && errno != EEXIST)
        fail("cannot create %s: %s", path, strerror(errno));
}

static void make_dirs(const char *path, mode_t mode)
{
    char partial[256];

    for (size_t i = 1; path[i]; i++) {
        if (path[i] == '/') {
            memcpy(partial, path, i);
            partial[i] = '\0';
            make_dir(partial, 0755);
        }
    }
    make_dir(path, mode);
}

/* Writes the connection file under a temporary name and renames it into place. */
static void write_connection_file(const struct params *params, const char *path)
{
    char temporary[320];
    FILE *file;

    snprintf(temporary, sizeof(temporary), "%s.tmp", path);
    file = fopen(temporary, "w");
    if (!file)
        fail("cannot create %s: %s", temporary, strerror(errno));
    fprintf(file,
            "{\"transport\": \"tcp\", \"ip\": \"%s\", \"key\": \"%s\", "
            "\"signature_scheme\": \"hmac-sha256\", \"kernel_name\": \"python3\"",
            params->ip, params->key);
    for (int i = 0; i < 5; i++)
        fprintf(file, ", \"%s_port\": %u", port_names[i], params->ports[i]);
    fputs("}\n", file);
    if (fclose(file) != 0)
        fail("cannot write %s: %s", temporary, strerror(errno));
    if (rename(temporary, path) != 0)
        fail("cannot rename %s to %s: %s", temporary, path, strerror(errno));
}

static void exec_kernel(const struct params *params) __attribute__((noreturn));

static void exec_kernel(const struct params *params)
{
    char path[300], home[300], runtime[300], ipython[300];

    make_dirs(params->runtime_dir, 0700);
    snprintf(path, sizeof(path), "%s/kernel.json", params->runtime_dir);
    snprintf(home, sizeof(home), "%s/home", params->runtime_dir);
    snprintf(runtime, sizeof(runtime), "%s/jupyter", params->runtime_dir);
    snprintf(ipython, sizeof(ipython), "%s/ipython", params->runtime_dir);
    make_dir(home, 0700);
    make_dir(runtime, 0700);
    make_dir(ipython, 0700);
    write_connection_file(params, path);

    if (vm_mode) {
        /* The kernel hands PID 1 a nearly empty environment: start from a clean one. */
        clearenv();
        setenv("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", 1);
        setenv("TERM", "dumb", 1);
    }
    setenv("HOME", home, 1);
    setenv("JUPYTER_RUNTIME_DIR", runtime, 1);
    setenv("IPYTHONDIR", ipython, 1);
    setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1", 1);
    setenv("LANG", "C.UTF-8", 1);

    char *argv[] = {"python3", "-Xfrozen_modules=off", "-m", "ipykernel_launcher",
                    "-f",      path,                   NULL};
    fflush(stdout);
    marker(MARKER_EXEC_KERNEL);
    execv("/usr/bin/python3", argv);
    fail("cannot execute /usr/bin/python3: %s", strerror(errno));
}

/* As PID 1: runs the Jupyter kernel as a child, reaps orphans, reboots when the child exits. */
static void supervise(const struct params *params) __attribute__((noreturn));

static void supervise(const struct params *params)
{
    pid_t child = fork();
    int status;

    if (child < 0)
        fail("cannot fork: %s", strerror(errno));
    if (child == 0) {
        /* Errors in the child end it; the parent then reboots the guest. */
        vm_mode = 0;
        port_allowed = port_allowed && ioperm(MARKER_PORT, 1, 1) == 0;
        exec_kernel(params);
    }
    for (;;) {
        pid_t pid = wait(&status);

        if (pid == child || (pid < 0 && errno == ECHILD))
            break;
    }
    if (WIFEXITED(status))
        fprintf(stderr, "isobench-init: Jupyter kernel exited with status %d\n",
                WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        fprintf(stderr, "isobench-init: Jupyter kernel killed by signal %d\n", WTERMSIG(status));
    sync();
    reboot(RB_AUTOBOOT);
    _exit(1);
}

int main(void)
{
    struct params params;

    /* PID 1 with /proc not yet mounted is the microVM; a container's PID 1 has /proc. */
    vm_mode = getpid() == 1 && access("/proc/self/stat", F_OK) != 0;
    if (vm_mode)
        port_allowed = ioperm(MARKER_PORT, 1, 1) == 0;
    marker(MARKER_INIT_STARTED);

    default_params(&params);
    if (vm_mode) {
        mount_guest_filesystems();
        ensure_console();
        loopback_up();
        marker(MARKER_MOUNTS_DONE);
        params_from_cmdline(&params);
        supervise(&params);
    }
    params_from_environment(&params);
    exec_kernel(&params);
}
