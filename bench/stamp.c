/* stamp: stand-in "restart command" for the marker-watcher benchmark.
 *
 *   stamp [-e] [-n NAME] [-r MARKER] RESULTS
 *
 * The very first thing it does is read CLOCK_REALTIME (t1).  Then:
 *   -n NAME    the file name the watcher saw (e.g. incron's $#).  If it is not
 *              ".deploy-ready", exit 0 without recording anything; this lets
 *              watchers that cannot filter by name be used unchanged.
 *   RESULTS    gets one line "t1_ns pid\n", appended in a single write.
 *   -e         the line is "t1_ns pid t2_ns\n", t2 read right before that write (so the
 *              time the command itself took is known; deploy-sentinel's bench/ uses it).
 *   -r MARKER  unlink MARKER afterwards, so the next drop can start.  Leave it
 *              out when the watcher removes the marker itself.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    struct timespec t1;
    clock_gettime(CLOCK_REALTIME, &t1);

    const char *name = NULL, *marker = NULL;
    int c, end = 0;
    while ((c = getopt(argc, argv, "en:r:")) != -1) {
        if (c == 'e') end = 1;
        else if (c == 'n') name = optarg;
        else if (c == 'r') marker = optarg;
        else return 2;
    }
    if (optind != argc - 1) {
        fprintf(stderr, "usage: stamp [-e] [-n NAME] [-r MARKER] RESULTS\n");
        return 2;
    }
    if (name && strcmp(name, ".deploy-ready") != 0)
        return 0;

    char line[96];
    int fd = open(argv[optind], O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    struct timespec t2;
    clock_gettime(CLOCK_REALTIME, &t2);
    int len = end ? snprintf(line, sizeof line, "%lld %d %lld\n",
                             (long long)t1.tv_sec * 1000000000LL + t1.tv_nsec, (int)getpid(),
                             (long long)t2.tv_sec * 1000000000LL + t2.tv_nsec)
                  : snprintf(line, sizeof line, "%lld %d\n",
                             (long long)t1.tv_sec * 1000000000LL + t1.tv_nsec, (int)getpid());
    if (fd < 0 || write(fd, line, len) != len) {
        perror("stamp: results");
        return 1;
    }
    close(fd);
    if (marker && unlink(marker) != 0 && errno != ENOENT) {
        perror("stamp: unlink marker");
        return 1;
    }
    return 0;
}
