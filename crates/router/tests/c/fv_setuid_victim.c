/*
 * fv_setuid_victim.c: the target of tests/security.rs's exec attack.
 *
 * Built by the test as a static, non-PIE, setuid-root program, so that its
 * two pages below lie at fixed addresses the attacker knows (from `nm`):
 * - `secret`: filled from a file only root can read;
 * - `flag`: "flag intact", which only the program itself writes.
 *
 * Usage: fv_setuid_victim SECRET_FILE
 * It prints its credentials, writes one byte to fd 3 (if open: the
 * attacker's "I am running" pipe), waits until SIGUSR1 or 20 s, then
 * prints the flag page's first line and exits 0.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

char secret[4096] __attribute__((aligned(4096)));
char flag[4096] __attribute__((aligned(4096)));

static volatile sig_atomic_t done;

static void on_usr1(int sig)
{
	(void)sig;
	done = 1;
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s SECRET_FILE\n", argv[0]);
		return 2;
	}
	int fd = open(argv[1], O_RDONLY);
	if (fd < 0 || read(fd, secret, sizeof(secret) - 1) <= 0) {
		perror("victim: reading the secret");
		return 2;
	}
	close(fd);
	strcpy(flag, "flag intact");
	signal(SIGUSR1, on_usr1);
	printf("victim: ruid=%d euid=%d ready\n", (int)getuid(), (int)geteuid());
	fflush(stdout);
	if (write(3, "r", 1) != 1) {
		/* No attacker pipe: run alone. */
	}
	close(3);
	for (int i = 0; i < 2000 && !done; i++) {
		struct timespec ts = {0, 10 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	flag[sizeof(flag) - 1] = 0;
	printf("victim: flag page says \"%.64s\"\n", flag);
	fflush(stdout);
	return 0;
}
