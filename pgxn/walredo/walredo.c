/*-------------------------------------------------------------------------
 *
 * walredo.c
 *	  Strata's WAL redo service for stock PostgreSQL 15.
 *
 * SQL function walredo_main() never returns.  Run it in
 * `postgres --single` on a scratch cluster: it prints a marker line on
 * stdout and then serves a binary protocol on stdin/stdout that rebuilds one
 * page ("the target block") at a time by replaying raw WAL records with the
 * server's own resource managers.
 *
 * Protocol.  Every request message is a tag byte, a little-endian uint32
 * body length, then the body:
 *
 *	 'B'  begin redo: spc, db, rel (uint32 each), fork (uint8), blkno (uint32)
 *	 'P'  push base page: BLCKSZ bytes of the target block
 *	 'Z'  push an all-zero base page (no body)
 *	 'A'  apply record: uint64 end LSN, then the raw record (XLogRecord...)
 *	 'G'  get page (no body): answered with BLCKSZ bytes on stdout, and ends
 *		  the request
 *	 'H'  ping (no body): answered with the 4 bytes "PONG"
 *	 'T'  test command (only in builds with WALREDO_TEST_COMMANDS, see
 *		  below): uint8 kind, uint64 argument; answered with "DONE"
 *
 * Sandbox.  Once set up and before it reads the first request, the process
 * installs a seccomp filter (libseccomp) that allows only the system calls
 * redo needs: I/O on open descriptors (its pipes and the scratch cluster's
 * relation files, which redo opens, creates and reads), memory management
 * without PROT_EXEC, signal returns, time and exit.  Anything else --
 * sockets, exec, fork, ptrace, kill, chmod, unlink... -- kills the process
 * at once (SECCOMP_RET_KILL_PROCESS: SIGSYS, no handler runs).  The GUC
 * strata_walredo.sandbox (default on; `-c strata_walredo.sandbox=off` on
 * the command line) turns the filter off.  Resource limits (memory, CPU
 * time) are set by the pageserver when it spawns the process.
 *
 * Test commands.  A build with -DWALREDO_TEST_COMMANDS (scripts/
 * build-walredo.sh --test, used only by the test suite) accepts 'T': kind 1
 * opens a TCP socket (forbidden by the filter: the process dies), kind 2
 * allocates and touches <argument> bytes (fails on the memory limit).  A
 * production build has no such code: 'T' is an unknown tag there.
 *
 * On any error a message goes to stderr and the process _exit(1)s: an error
 * must never reach PostgresMain (which would read the binary stream as SQL)
 * and proc_exit() must never run (its shutdown checkpoint would flush the
 * fake buffers).  The scratch cluster recovers by itself on the next start.
 *
 * How a page is rebuilt (see shared/notes/walredo-stock-pg15.md):
 *	- block references other than the target get a fake full-page image (an
 *	  empty page with a generous special space), so redo restores (and
 *	  ignores) them; block numbers are never rewritten;
 *	- every touched relation has its main/FSM/VM forks created and its cached
 *	  size set to a huge value, so that reads never go past "EOF" (which would
 *	  silently skip redo);
 *	- at the end of a request (and after every record that touched other
 *	  blocks) the buffers of every touched relation are dropped, so no dirty
 *	  fake buffer is ever written out.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <stdio.h>
#include <unistd.h>
#include <sys/mman.h>
#include <seccomp.h>
#ifdef WALREDO_TEST_COMMANDS
#include <sys/socket.h>
#include <netinet/in.h>
#endif

#include "access/xlog.h"
#include "access/xlog_internal.h"
#include "access/xlogreader.h"
#include "access/xlogrecord.h"
#include "access/xlogutils.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/bufmgr.h"
#include "storage/bufpage.h"
#include "storage/ipc.h"
#include "storage/smgr.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/timeout.h"

PG_MODULE_MAGIC;

PG_FUNCTION_INFO_V1(walredo_main);

void		_PG_init(void);

#define WALREDO_MARKER "STRATA-WALREDO-READY"

/* Cached relation size during redo: big, but summable in uint32. */
#define HUGE_NBLOCKS ((BlockNumber) 0x3FFFFFFF)

/* Special space of fake images: larger than any access method's opaque data. */
#define FAKE_IMAGE_SPECIAL_SIZE 64

/* Largest message body accepted: a maximal record plus its LSN. */
#define MAX_BODY_LEN ((uint32) (MaxAllocSize - 16))

typedef struct RedoTarget
{
	bool		active;
	RelFileNode rnode;
	ForkNumber	forknum;
	BlockNumber blkno;
	/* the target page holds an initialised page (not all zeroes) */
	bool		initialised;
	/*
	 * The target is an init-fork page, rebuilt in the main fork: redo of an
	 * INIT_FORKNUM block flushes the buffer at once (XLogReadBufferForRedo),
	 * which would XLogFlush an LSN this process never generated.  Page
	 * contents do not depend on the fork, so the block is redone as main.
	 */
	bool		init_as_main;
} RedoTarget;

static RedoTarget target;

/* Relations touched by the current request (their buffers get dropped). */
static RelFileNode *touched_rels;
static int	n_touched;
static int	max_touched;

static XLogReaderState *reader;
static MemoryContext record_cxt;
static char *body_buf;
static uint32 body_cap;
static PGAlignedBlock fake_image;
static PGAlignedBlock page_copy;

/* GUC strata_walredo.sandbox: install the seccomp filter. */
static bool sandbox_enabled = true;

static void fail(const char *fmt,...) pg_attribute_printf(1, 2) pg_attribute_noreturn();

/* Report on stderr and leave without running any exit callbacks. */
static void
fail(const char *fmt,...)
{
	va_list		ap;

	fprintf(stderr, "walredo: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\n");
	fflush(stderr);
	_exit(1);
}

/* Any proc_exit() (FATAL, signals) ends here before the shutdown checkpoint. */
static void
exit_without_checkpoint(int code, Datum arg)
{
	fflush(stderr);
	_exit(code == 0 ? 1 : code);
}

static uint32
get_u32(const char *p)
{
	const unsigned char *u = (const unsigned char *) p;

	return (uint32) u[0] | ((uint32) u[1] << 8) | ((uint32) u[2] << 16) | ((uint32) u[3] << 24);
}

static uint64
get_u64(const char *p)
{
	return (uint64) get_u32(p) | ((uint64) get_u32(p + 4) << 32);
}

static bool
read_exact(void *buf, size_t len)
{
	return len == 0 || fread(buf, 1, len, stdin) == len;
}

static void
write_exact(const void *buf, size_t len)
{
	if (fwrite(buf, 1, len, stdout) != len || fflush(stdout) != 0)
		fail("could not write to stdout: %m");
}

/* ---- relations ---------------------------------------------------------- */

static void
remember_rel(RelFileNode rnode)
{
	for (int i = 0; i < n_touched; i++)
		if (RelFileNodeEquals(touched_rels[i], rnode))
			return;
	if (n_touched == max_touched)
	{
		max_touched = max_touched * 2;
		touched_rels = repalloc(touched_rels, sizeof(RelFileNode) * max_touched);
	}
	touched_rels[n_touched++] = rnode;
}

/*
 * Make a relation fork readable during redo: the files exist (heap redo pins
 * the VM through the relcache path, which needs the file) and the cached
 * size is huge, so no read counts as past the end.
 */
static void
prepare_rel(RelFileNode rnode, ForkNumber forknum)
{
	SMgrRelation reln = smgropen(rnode, InvalidBackendId);

	remember_rel(rnode);
	smgrcreate(reln, MAIN_FORKNUM, true);
	smgrcreate(reln, FSM_FORKNUM, true);
	smgrcreate(reln, VISIBILITYMAP_FORKNUM, true);
	reln->smgr_cached_nblocks[MAIN_FORKNUM] = HUGE_NBLOCKS;
	reln->smgr_cached_nblocks[FSM_FORKNUM] = HUGE_NBLOCKS;
	reln->smgr_cached_nblocks[VISIBILITYMAP_FORKNUM] = HUGE_NBLOCKS;
	if (forknum == INIT_FORKNUM)
	{
		smgrcreate(reln, INIT_FORKNUM, true);
		reln->smgr_cached_nblocks[INIT_FORKNUM] = HUGE_NBLOCKS;
	}
}

/* Forget every buffer of every touched relation (none may be pinned). */
static void
drop_touched_buffers(void)
{
	ForkNumber	forks[MAX_FORKNUM + 1];
	BlockNumber first[MAX_FORKNUM + 1];

	for (int f = 0; f <= MAX_FORKNUM; f++)
	{
		forks[f] = (ForkNumber) f;
		first[f] = 0;
	}
	for (int i = 0; i < n_touched; i++)
	{
		SMgrRelation reln = smgropen(touched_rels[i], InvalidBackendId);

		for (int f = 0; f <= MAX_FORKNUM; f++)
			reln->smgr_cached_nblocks[f] = InvalidBlockNumber;
		DropRelFileNodeBuffers(reln, forks, MAX_FORKNUM + 1, first);
	}
	n_touched = 0;
}

/* ---- the target page ---------------------------------------------------- */

static void
load_target_page(const char *page)
{
	Buffer		buf;

	prepare_rel(target.rnode, target.forknum);
	buf = ReadBufferWithoutRelcache(target.rnode, target.forknum, target.blkno,
									RBM_ZERO_AND_LOCK, NULL, true);
	memcpy(BufferGetPage(buf), page, BLCKSZ);
	MarkBufferDirty(buf);
	UnlockReleaseBuffer(buf);
	target.initialised = !PageIsNew((Page) page);
}

/* Copy the current target page into page_copy. */
static void
copy_target_page(void)
{
	Buffer		buf;

	prepare_rel(target.rnode, target.forknum);
	InRecovery = true;
	buf = ReadBufferWithoutRelcache(target.rnode, target.forknum, target.blkno,
									RBM_NORMAL, NULL, true);
	InRecovery = false;
	LockBuffer(buf, BUFFER_LOCK_SHARE);
	memcpy(page_copy.data, BufferGetPage(buf), BLCKSZ);
	UnlockReleaseBuffer(buf);
}

/* Drop the fake buffers of other blocks, keeping the target page. */
static void
drop_all_but_target(void)
{
	copy_target_page();
	drop_touched_buffers();
	load_target_page(page_copy.data);
}

static void
end_request(void)
{
	drop_touched_buffers();
	target.active = false;
	target.initialised = false;
}

static void
begin_request(const char *body, uint32 len)
{
	if (len != 17)
		fail("begin message has %u bytes, expected 17", len);
	if (target.active)
		end_request();
	target.rnode.spcNode = get_u32(body);
	target.rnode.dbNode = get_u32(body + 4);
	target.rnode.relNode = get_u32(body + 8);
	target.forknum = (ForkNumber) (unsigned char) body[12];
	target.blkno = get_u32(body + 13);
	if (target.forknum > MAX_FORKNUM)
		fail("invalid fork number %d", (int) target.forknum);
	target.init_as_main = (target.forknum == INIT_FORKNUM);
	if (target.init_as_main)
		target.forknum = MAIN_FORKNUM;
	target.active = true;
	target.initialised = false;
	prepare_rel(target.rnode, target.forknum);
}

/* ---- applying records --------------------------------------------------- */

static bool
is_target(DecodedBkpBlock *blk)
{
	ForkNumber	fork = target.init_as_main ? INIT_FORKNUM : target.forknum;

	return RelFileNodeEquals(blk->rnode, target.rnode) &&
		blk->forknum == fork && blk->blkno == target.blkno;
}

/* Replace whatever this block ref says by "restore an empty page". */
static void
fake_full_page_image(DecodedBkpBlock *blk)
{
	blk->has_image = true;
	blk->apply_image = true;
	blk->bkp_image = fake_image.data;
	blk->hole_offset = 0;
	blk->hole_length = 0;
	blk->bimg_len = BLCKSZ;
	blk->bimg_info = BKPIMAGE_APPLY;
}

/*
 * Prepare the decoded record's block refs; returns whether any non-target
 * block is referenced.  Fails if the target is not referenced, or if the
 * record would have to modify a target page that was never initialised.
 */
static bool
prepare_blocks(DecodedXLogRecord *decoded, XLogRecPtr lsn)
{
	bool		found = false;
	bool		others = false;

	for (int id = 0; id <= decoded->max_block_id; id++)
	{
		DecodedBkpBlock *blk = &decoded->blocks[id];

		if (!blk->in_use)
			continue;
		prepare_rel(blk->rnode, blk->forknum);
		if (!is_target(blk))
		{
			/* Never flushed: see RedoTarget.init_as_main. */
			if (blk->forknum == INIT_FORKNUM)
				blk->forknum = MAIN_FORKNUM;
			fake_full_page_image(blk);
			others = true;
			continue;
		}
		found = true;
		if (target.init_as_main)
			blk->forknum = MAIN_FORKNUM;
		if (blk->apply_image || (blk->flags & BKPBLOCK_WILL_INIT))
			target.initialised = true;
		else if (!target.initialised && target.forknum == MAIN_FORKNUM)
			fail("record ending at %X/%X modifies the target block %u/%u/%u.%d.%u, "
				 "but no base page or initialising record was given",
				 LSN_FORMAT_ARGS(lsn), target.rnode.spcNode, target.rnode.dbNode,
				 target.rnode.relNode, (int) target.forknum, target.blkno);
	}
	if (!found)
		fail("record ending at %X/%X does not reference the target block",
			 LSN_FORMAT_ARGS(lsn));
	return others;
}

static void
apply_record(const char *body, uint32 len)
{
	XLogRecPtr	end_lsn;
	XLogRecord *rec;
	DecodedXLogRecord *decoded;
	MemoryContext oldcxt;
	char	   *errmsg = NULL;
	bool		others;

	if (!target.active)
		fail("apply message outside of a request");
	if (len < sizeof(uint64) + SizeOfXLogRecord)
		fail("apply message of %u bytes is too short", len);
	end_lsn = get_u64(body);
	rec = (XLogRecord *) (body + sizeof(uint64));
	if (rec->xl_tot_len != len - sizeof(uint64))
		fail("record ending at %X/%X: xl_tot_len %u does not match the %u bytes sent",
			 LSN_FORMAT_ARGS(end_lsn), rec->xl_tot_len, (uint32) (len - sizeof(uint64)));

	oldcxt = MemoryContextSwitchTo(record_cxt);
	decoded = palloc0(DecodeXLogRecordRequiredSpace(rec->xl_tot_len));
	/* the start LSN is not sent; nothing in redo depends on its exact value */
	if (!DecodeXLogRecord(reader, decoded, rec, end_lsn - MAXALIGN(rec->xl_tot_len), &errmsg))
		fail("cannot decode record ending at %X/%X: %s", LSN_FORMAT_ARGS(end_lsn),
			 errmsg ? errmsg : "unknown error");
	others = prepare_blocks(decoded, end_lsn);

	reader->record = decoded;
	reader->ReadRecPtr = decoded->lsn;
	reader->EndRecPtr = end_lsn;
	InRecovery = true;
	GetRmgr(rec->xl_rmid).rm_redo(reader);
	InRecovery = false;
	reader->record = NULL;

	MemoryContextSwitchTo(oldcxt);
	MemoryContextReset(record_cxt);
	if (others)
		drop_all_but_target();
}

static void
get_page(void)
{
	if (!target.active)
		fail("get-page message outside of a request");
	copy_target_page();
	end_request();
	write_exact(page_copy.data, BLCKSZ);
}

/* ---- sandbox ------------------------------------------------------------ */

/*
 * System calls redo may make once serving (found by running the whole
 * pageserver test suite, which replays every record type it meets, under
 * the filter).  Names that do not exist on this architecture are skipped.
 * mmap and mprotect are allowed only without PROT_EXEC (see below).
 */
static const char *const allowed_syscalls[] = {
	/* the pipes and the scratch cluster's relation files */
	"read", "write", "readv", "writev", "pread64", "pwrite64",
	"lseek", "close", "openat", "open", "fstat", "newfstatat", "statx",
	"fsync", "fdatasync", "ftruncate", "fallocate",
	/* the directory of a database the scratch cluster has not seen yet */
	"mkdir", "mkdirat",
	/* memory (mmap/mprotect: conditional rules below) */
	"brk", "munmap", "mremap", "madvise",
	/* signals, time, identity, exit */
	"rt_sigreturn", "rt_sigprocmask", "sigaltstack",
	"clock_gettime", "gettimeofday", "getpid", "getrusage",
	"exit", "exit_group",
};

static void
add_rule(scmp_filter_ctx ctx, const char *name, unsigned int n_args,
		 const struct scmp_arg_cmp *args)
{
	int			nr = seccomp_syscall_resolve_name(name);
	int			rc;

	if (nr == __NR_SCMP_ERROR || nr < 0)
		return;					/* not a system call of this architecture */
	rc = seccomp_rule_add_array(ctx, SCMP_ACT_ALLOW, nr, n_args, args);
	if (rc < 0)
		fail("seccomp: cannot allow %s: %s", name, strerror(-rc));
}

/*
 * Install the filter.  Default action: kill the whole process
 * (SECCOMP_RET_KILL_PROCESS); libseccomp also sets no_new_privs.
 */
static void
install_sandbox(void)
{
	scmp_filter_ctx ctx;
	struct scmp_arg_cmp no_exec = SCMP_A2(SCMP_CMP_MASKED_EQ, PROT_EXEC, 0);
	int			rc;

#ifdef WALREDO_SECCOMP_DEBUG
	/* development aid: SIGSYS names the syscall (see trap_sigsys) */
	ctx = seccomp_init(SCMP_ACT_TRAP);
#else
	ctx = seccomp_init(SCMP_ACT_KILL_PROCESS);
#endif
	if (ctx == NULL)
		fail("seccomp: cannot create a filter");
	for (size_t i = 0; i < lengthof(allowed_syscalls); i++)
		add_rule(ctx, allowed_syscalls[i], 0, NULL);
	add_rule(ctx, "mmap", 1, &no_exec);
	add_rule(ctx, "mprotect", 1, &no_exec);
	rc = seccomp_load(ctx);
	seccomp_release(ctx);
	if (rc < 0)
		fail("seccomp: cannot load the filter: %s", strerror(-rc));
}

#ifdef WALREDO_SECCOMP_DEBUG
static void
trap_sigsys(int signo, siginfo_t *info, void *ctx)
{
	char		msg[64];
	int			len = snprintf(msg, sizeof(msg), "walredo: forbidden syscall %d\n",
							   info->si_syscall);

	if (write(2, msg, len) < 0)
		_exit(3);
	_exit(3);
}

static void
install_sigsys_trap(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = trap_sigsys;
	sa.sa_flags = SA_SIGINFO;
	sigaction(SIGSYS, &sa, NULL);
}
#endif

#ifdef WALREDO_TEST_COMMANDS
/* 'T': do something the sandbox or the resource limits must stop. */
static void
test_command(const char *body, uint32 len)
{
	uint64		arg;

	if (len != 9)
		fail("test message has %u bytes, expected 9", len);
	arg = get_u64(body + 1);
	switch (body[0])
	{
		case 1:
			{
				int			fd = socket(AF_INET, SOCK_STREAM, 0);

				if (fd < 0)
					fail("socket: %m");
				close(fd);
				break;
			}
		case 2:
			{
				char	   *mem = malloc(arg);

				if (mem == NULL)
					fail("out of memory: cannot allocate " UINT64_FORMAT " bytes", arg);
				memset(mem, 0x5a, arg);
				free(mem);
				break;
			}
		default:
			fail("unknown test command %d", (int) body[0]);
	}
	write_exact("DONE", 4);
}
#endif

/* ---- main loop ---------------------------------------------------------- */

static char *
read_body(uint32 len)
{
	if (len > MAX_BODY_LEN)
		fail("message body of %u bytes is too large", len);
	if (len > body_cap)
	{
		body_buf = repalloc(body_buf, len);
		body_cap = len;
	}
	if (!read_exact(body_buf, len))
		fail("stdin closed inside a message");
	return body_buf;
}

static void
serve(void)
{
	for (;;)
	{
		char		header[5];
		uint32		len;
		char	   *body;

		if (fread(header, 1, 1, stdin) != 1)
			_exit(0);			/* client went away: nothing to keep */
		if (!read_exact(header + 1, 4))
			fail("stdin closed inside a message header");
		len = get_u32(header + 1);
		body = read_body(len);
		switch (header[0])
		{
			case 'B':
				begin_request(body, len);
				break;
			case 'P':
				if (!target.active || len != BLCKSZ)
					fail("bad push-page message (%u bytes)", len);
				load_target_page(body);
				break;
			case 'Z':
				if (!target.active)
					fail("zero-page message outside of a request");
				memset(page_copy.data, 0, BLCKSZ);
				load_target_page(page_copy.data);
				break;
			case 'A':
				apply_record(body, len);
				break;
			case 'G':
				get_page();
				break;
			case 'H':
				write_exact("PONG", 4);
				break;
#ifdef WALREDO_TEST_COMMANDS
			case 'T':
				test_command(body, len);
				break;
#endif
			default:
				fail("unknown message tag 0x%02x", (unsigned char) header[0]);
		}
	}
}

static void
setup(void)
{
	MemoryContext oldcxt = MemoryContextSwitchTo(TopMemoryContext);

	before_shmem_exit(exit_without_checkpoint, (Datum) 0);
	reader = XLogReaderAllocate(wal_segment_size, NULL,
								XL_ROUTINE(.page_read = NULL), NULL);
	if (reader == NULL)
		fail("out of memory allocating the WAL reader");
	record_cxt = AllocSetContextCreate(TopMemoryContext, "walredo record",
									   ALLOCSET_DEFAULT_SIZES);
	max_touched = 16;
	touched_rels = palloc(sizeof(RelFileNode) * max_touched);
	body_cap = 2 * BLCKSZ;
	body_buf = palloc(body_cap);
	/*
	 * Some redo routines modify a page even when it was restored from an
	 * image (hash split-allocate writes the old bucket's opaque area), so
	 * the fake page needs a special space for such writes to land in.
	 */
	PageInit((Page) fake_image.data, BLCKSZ, FAKE_IMAGE_SPECIAL_SIZE);
	MemoryContextSwitchTo(oldcxt);
	RmgrStartup();
	/*
	 * No timer may fire once the sandbox is on: re-arming it (setitimer) is
	 * forbidden.  Start-up leaves one armed: the startup-progress timeout
	 * (log_startup_progress_interval) of the scratch cluster's recovery.
	 */
	disable_all_timeouts(false);
}

void
_PG_init(void)
{
	DefineCustomBoolVariable("strata_walredo.sandbox",
							 "Confine the WAL redo process with a seccomp filter.",
							 "Set by the pageserver; off only for debugging.",
							 &sandbox_enabled, true, PGC_SUSET, 0,
							 NULL, NULL, NULL);
	MarkGUCPrefixReserved("strata_walredo");
}

Datum
walredo_main(PG_FUNCTION_ARGS)
{
	setup();
#ifdef WALREDO_SECCOMP_DEBUG
	install_sigsys_trap();
#endif
	if (sandbox_enabled)
		install_sandbox();
	printf("\n%s\n", WALREDO_MARKER);
	fflush(stdout);
	PG_TRY();
	{
		serve();
	}
	PG_CATCH();
	{
		EmitErrorReport();
		fflush(stderr);
		_exit(1);
	}
	PG_END_TRY();
	_exit(0);
	PG_RETURN_VOID();
}
