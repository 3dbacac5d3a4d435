/* sdnotify: what a process in a container does to tell its supervisor how it is, built static
 * by tests/integration/test_notify.py (busybox's nc speaks no Unix datagram sockets).
 *
 *   sdnotify MESSAGE...       one datagram to $NOTIFY_SOCKET, the arguments newline-separated
 *   sdnotify -n N MESSAGE...  N such datagrams, non-blocking; prints how many the kernel took
 *
 * Exit status: 0 sent, 1 a send failed, 2 usage or no $NOTIFY_SOCKET. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int main(int argc, char **argv) {
    long count = -1;
    int first = 1;
    if (argc > 2 && strcmp(argv[1], "-n") == 0) {
        count = atol(argv[2]);
        first = 3;
    }
    const char *path = getenv("NOTIFY_SOCKET");
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (path == NULL || path[0] == '\0' || strlen(path) >= sizeof addr.sun_path) {
        fprintf(stderr, "sdnotify: $NOTIFY_SOCKET is not set or too long\n");
        return 2;
    }
    strcpy(addr.sun_path, path);
    if (addr.sun_path[0] == '@')
        addr.sun_path[0] = '\0';
    static char buf[65536];
    size_t n = 0;
    for (int i = first; i < argc; i++) {
        size_t len = strlen(argv[i]);
        if (n + len + 1 > sizeof buf) {
            fprintf(stderr, "sdnotify: message too long\n");
            return 2;
        }
        if (i > first)
            buf[n++] = '\n';
        memcpy(buf + n, argv[i], len);
        n += len;
    }
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        perror("sdnotify: socket");
        return 1;
    }
    if (count < 0) {
        if (sendto(fd, buf, n, 0, (struct sockaddr *)&addr, sizeof addr) < 0) {
            perror("sdnotify: sendto");
            return 1;
        }
        return 0;
    }
    long taken = 0, refused = 0;
    for (long i = 0; i < count; i++) {
        if (sendto(fd, buf, n, MSG_DONTWAIT, (struct sockaddr *)&addr, sizeof addr) >= 0)
            taken++;
        else if (errno == EAGAIN || errno == EWOULDBLOCK)
            refused++;
        else {
            perror("sdnotify: sendto");
            return 1;
        }
    }
    printf("sent=%ld refused=%ld\n", taken, refused);
    return 0;
}
