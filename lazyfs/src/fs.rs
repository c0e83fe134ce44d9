//! The FUSE filesystem of a lazy data directory: names, inodes and handles
//! over the backing directory; block contents go through [`Overlay`].
//!
//! Owns the inode table: our own inode numbers (never the backing ones, so
//! a backing inode reused after an unlink cannot alias an old node), a path
//! per live node, and the node's [`FileState`] (shared with open handles, so
//! an unlinked-but-open file keeps its remote map). Invariants:
//!
//! * only the kernel (this mount) changes the backing directory, so
//!   attributes, entries and *negative* entries are cached by the kernel for
//!   [`TTL`] (PostgreSQL probes many missing `_fsm`/`_vm`/`_init` forks);
//! * every file and directory is shown owned by the configured uid/gid (the
//!   PostgreSQL user) with the backing file's mode; permissions are checked
//!   by the kernel (`default_permissions`);
//! * a rename moves the node (and the remote map with it); an unlink or
//!   rmdir forgets the path at once; directory listings are snapshots taken
//!   at `opendir`;
//! * relation files listed by the manifest but not in the backing
//!   directory ([`Unmade`]) appear in listings and are made before any
//!   operation that names them (lookup, getattr, open, create, mkdir,
//!   rename — a renamed directory's whole subtree —, unlink) reaches the
//!   backing directory; `rmdir` of a directory still listing one is
//!   ENOTEMPTY;
//! * `fsync`, `fsyncdir` and `flush` succeed without forwarding: the overlay
//!   is rebuilt at every start and needs no durability;
//! * errors of the backing directory are returned as their errno; fetch
//!   failures as EIO;
//! * FUSE passthrough (asked for with [`LazyFs::with_passthrough`], which
//!   replaces the writeback cache: the kernel enables passthrough only on a
//!   connection without it; granted when the kernel offers it and lazyfs
//!   may register backing files, i.e. runs as root): an open of a file with no pending
//!   block is answered with the backing file, so the kernel reads and
//!   writes it directly. The kernel refuses (EIO) to mix passthrough and
//!   cached opens of one inode and wants one backing id for all its
//!   passthrough opens, so per inode ([`IoMode`]): passthrough only while it
//!   has no cached open, cached only while it has no passthrough open, one
//!   [`BackingId`] while passthrough opens live. A file never gets a
//!   pending block back, so once passthrough it stays so. A cached open of
//!   an inode that was passthrough before drops the kernel's page cache
//!   (no `FOPEN_KEEP_CACHE`): those pages may predate direct writes.
//!
//! Cancellation: requests are handled synchronously on fuser's worker
//! threads; an interrupted request still completes (its reply is dropped by
//! the kernel).

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    BackingId, Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use crate::blockmap::RemoteBlocks;
use crate::overlay::{FileState, Overlay};
use crate::unmade::Unmade;

/// How long the kernel may cache attributes and (negative) entries.
pub const TTL: Duration = Duration::from_secs(3600);
/// Largest write and readahead asked of the kernel.
pub const MAX_IO_BYTES: u32 = 1 << 20;
const ROOT: u64 = 1;

struct Node {
    /// Relative to the backing root ("" for the root).
    path: PathBuf,
    state: Arc<FileState>,
    /// Unlinked (or replaced by a rename) while the kernel may still hold
    /// it open: reached only through open handles from now on.
    unlinked: bool,
}

struct Handle {
    file: File,
    state: Arc<FileState>,
    ino: u64,
    /// Opened with passthrough (counted in [`IoMode::passthrough`]).
    passthrough: bool,
}

/// How the kernel does I/O on one inode's open files (see the module doc).
#[derive(Default)]
struct IoMode {
    cached: usize,
    passthrough: usize,
    /// Registered while `passthrough > 0`.
    backing: Option<BackingId>,
    had_passthrough: bool,
}

/// An open answered either way.
enum OpenReply {
    Open(ReplyOpen),
    Create(ReplyCreate, FileAttr),
}

impl OpenReply {
    fn open_backing(&self, file: &File) -> io::Result<BackingId> {
        match self {
            OpenReply::Open(r) => r.open_backing(file),
            OpenReply::Create(r, _) => r.open_backing(file),
        }
    }

    fn cached(self, fh: FileHandle, flags: FopenFlags) {
        match self {
            OpenReply::Open(r) => r.opened(fh, flags),
            OpenReply::Create(r, attr) => r.created(&TTL, &attr, Generation(0), fh, flags),
        }
    }

    fn passthrough(self, fh: FileHandle, id: &BackingId) {
        match self {
            OpenReply::Open(r) => r.opened_passthrough(fh, FopenFlags::empty(), id),
            OpenReply::Create(r, attr) => r.created_passthrough(&TTL, &attr, Generation(0), fh, FopenFlags::empty(), id),
        }
    }
}

#[derive(Default)]
struct Table {
    nodes: HashMap<u64, Node>,
    by_path: HashMap<PathBuf, u64>,
    next_ino: u64,
}

/// Opens, for the prefetcher, the backing file of a node by its current
/// path (made first if unmade), so files need not exist, nor be held open,
/// before the prefetcher gets to them.
#[derive(Clone)]
pub struct Opener {
    root: PathBuf,
    table: Arc<Mutex<Table>>,
    unmade: Arc<Unmade>,
}

impl Opener {
    /// The backing file of the live node with remote state `state`, read
    /// and write; `None` when the compute unlinked it (nothing to warm).
    pub fn open(&self, state: &Arc<FileState>) -> io::Result<Option<File>> {
        let path = {
            let t = lock(&self.table);
            t.nodes.values().find(|n| !n.unlinked && Arc::ptr_eq(&n.state, state)).map(|n| n.path.clone())
        };
        let Some(rel) = path else { return Ok(None) };
        self.unmade.make(&rel)?;
        match OpenOptions::new().read(true).write(true).open(self.root.join(&rel)) {
            Ok(file) => Ok(Some(file)),
            // Unlinked or renamed just now.
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Owner shown for every file.
#[derive(Clone, Copy, Debug)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

pub struct LazyFs {
    root: PathBuf,
    owner: Owner,
    overlay: Overlay,
    /// Shared with the prefetcher's [`Opener`].
    table: Arc<Mutex<Table>>,
    unmade: Arc<Unmade>,
    files: Mutex<HashMap<u64, Arc<Handle>>>,
    dirs: Mutex<HashMap<u64, Arc<Vec<(u64, FileType, OsString)>>>>,
    next_fh: AtomicU64,
    io_modes: Mutex<HashMap<u64, IoMode>>,
    /// Passthrough asked for (`--passthrough`) and granted by the kernel at init.
    passthrough: bool,
    /// Registering a backing file failed once (no CAP_SYS_ADMIN): no more tries.
    passthrough_refused: std::sync::atomic::AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn errno(e: io::Error) -> Errno {
    match e.raw_os_error() {
        Some(code) => Errno::from_i32(code),
        // Not from the OS: a fetch failure or a bad page.
        None => Errno::EIO,
    }
}

fn kind_of(md: &std::fs::Metadata) -> FileType {
    FileType::from_std(md.file_type()).unwrap_or(FileType::RegularFile)
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs.clamp(0, 999_999_999) as u32)
    } else {
        UNIX_EPOCH
    }
}

impl LazyFs {
    /// A filesystem over `root`, whose files in `remote` (relative paths)
    /// start with remote blocks; those of them in `unmade` (path, size) are
    /// not in `root` yet.
    pub fn new(root: PathBuf, owner: Owner, overlay: Overlay, remote: Vec<(PathBuf, RemoteBlocks)>, unmade: Vec<(PathBuf, u64)>) -> LazyFs {
        let metrics = overlay.metrics().clone();
        let mut table = Table { next_ino: ROOT + 1, ..Default::default() };
        table.nodes.insert(ROOT, Node { path: PathBuf::new(), state: FileState::new(None, metrics.clone()), unlinked: false });
        table.by_path.insert(PathBuf::new(), ROOT);
        for (path, blocks) in remote {
            let ino = table.next_ino;
            table.next_ino += 1;
            table.by_path.insert(path.clone(), ino);
            table.nodes.insert(ino, Node { path, state: FileState::new(Some(blocks), metrics.clone()), unlinked: false });
        }
        LazyFs {
            unmade: Arc::new(Unmade::new(root.clone(), unmade)),
            root,
            owner,
            overlay,
            table: Arc::new(Mutex::new(table)),
            files: Mutex::default(),
            dirs: Mutex::default(),
            next_fh: AtomicU64::new(1),
            io_modes: Mutex::default(),
            passthrough: false,
            passthrough_refused: Default::default(),
        }
    }

    /// Ask the kernel for FUSE passthrough of wholly local files at init
    /// (off by default: [`LazyFs::new`] serves every open through lazyfs).
    pub fn with_passthrough(mut self, on: bool) -> LazyFs {
        self.passthrough = on;
        self
    }

    /// Files that still have pending blocks, with their remote state (for
    /// the prefetcher, which opens them with [`LazyFs::opener`]).
    pub fn remote_files(&self) -> Vec<(PathBuf, Arc<FileState>)> {
        let t = lock(&self.table);
        t.nodes.values().filter(|n| !n.unlinked && n.state.pending_count() > 0).map(|n| (n.path.clone(), n.state.clone())).collect()
    }

    /// How the prefetcher opens the backing file of a node.
    pub fn opener(&self) -> Opener {
        Opener { root: self.root.clone(), table: self.table.clone(), unmade: self.unmade.clone() }
    }

    fn backing(&self, rel: &Path) -> PathBuf {
        self.root.join(rel)
    }

    /// The backing path of `rel`, made first if it is an unmade relation file.
    fn made(&self, rel: &Path, op: &'static str) -> Result<PathBuf, Errno> {
        let created = self.unmade.make(rel).map_err(|e| {
            tracing::warn!(path = %rel.display(), op, "cannot create the backing file: {e}");
            errno(e)
        })?;
        if created {
            tracing::debug!(path = %rel.display(), op, "relation file created in the overlay");
        }
        Ok(self.backing(rel))
    }

    fn path_of(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        lock(&self.table).nodes.get(&ino.0).filter(|n| !n.unlinked).map(|n| n.path.clone()).ok_or(Errno::ENOENT)
    }

    /// An open handle of node `ino` (the only way to an unlinked file).
    fn any_handle_of(&self, ino: INodeNo) -> Option<Arc<Handle>> {
        let state = lock(&self.table).nodes.get(&ino.0).map(|n| n.state.clone())?;
        lock(&self.files).values().find(|h| Arc::ptr_eq(&h.state, &state)).cloned()
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        Ok(self.path_of(parent)?.join(name))
    }

    /// The node of `path`, created (without remote blocks) if new.
    fn node_for(&self, path: &Path) -> (u64, Arc<FileState>) {
        let mut t = lock(&self.table);
        if let Some(&ino) = t.by_path.get(path) {
            if let Some(n) = t.nodes.get(&ino) {
                return (ino, n.state.clone());
            }
        }
        let ino = t.next_ino;
        t.next_ino += 1;
        let state = FileState::new(None, self.overlay.metrics().clone());
        t.by_path.insert(path.to_path_buf(), ino);
        t.nodes.insert(ino, Node { path: path.to_path_buf(), state: state.clone(), unlinked: false });
        (ino, state)
    }

    fn forget_path(&self, path: &Path) {
        let mut t = lock(&self.table);
        if let Some(ino) = t.by_path.remove(path) {
            Self::unlink_node(&mut t, ino);
        }
    }

    /// Keep an unlinked node while the kernel may still use it (setattr of
    /// times at close, writeback through open handles); drop directories.
    fn unlink_node(t: &mut Table, ino: u64) {
        if let Some(n) = t.nodes.get_mut(&ino) {
            n.unlinked = true;
        }
    }

    /// Move every node at or under `from` to `to`; a node at `to` is replaced.
    fn move_path(&self, from: &Path, to: &Path) {
        let mut t = lock(&self.table);
        if let Some(ino) = t.by_path.remove(to) {
            Self::unlink_node(&mut t, ino);
        }
        let moved: Vec<(PathBuf, u64)> = t.by_path.iter().filter(|(p, _)| p.starts_with(from)).map(|(p, &i)| (p.clone(), i)).collect();
        for (old, ino) in moved {
            let Ok(rest) = old.strip_prefix(from) else { continue };
            let new = if rest.as_os_str().is_empty() { to.to_path_buf() } else { to.join(rest) };
            t.by_path.remove(&old);
            t.by_path.insert(new.clone(), ino);
            if let Some(n) = t.nodes.get_mut(&ino) {
                n.path = new;
            }
        }
    }

    fn attr(&self, ino: u64, md: &std::fs::Metadata) -> FileAttr {
        FileAttr {
            ino: INodeNo(ino),
            size: md.len(),
            blocks: md.blocks(),
            atime: time(md.atime(), md.atime_nsec()),
            mtime: time(md.mtime(), md.mtime_nsec()),
            ctime: time(md.ctime(), md.ctime_nsec()),
            crtime: UNIX_EPOCH,
            kind: kind_of(md),
            perm: (md.mode() & 0o7777) as u16,
            nlink: md.nlink() as u32,
            uid: self.owner.uid,
            gid: self.owner.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    fn handle(&self, fh: FileHandle) -> Result<Arc<Handle>, Errno> {
        lock(&self.files).get(&fh.0).cloned().ok_or(Errno::EBADF)
    }

    fn add_handle(&self, file: File, state: Arc<FileState>, ino: u64, passthrough: bool) -> FileHandle {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.files).insert(fh, Arc::new(Handle { file, state, ino, passthrough }));
        FileHandle(fh)
    }

    /// Answer an open (or create) of node `ino`: passthrough when the file
    /// is wholly local and the inode has no cached open, else through
    /// lazyfs (see the module doc for the kernel's rules).
    fn reply_open(&self, ino: u64, file: File, state: Arc<FileState>, reply: OpenReply) {
        let metrics = self.overlay.metrics();
        let mut modes = lock(&self.io_modes);
        let mode = modes.entry(ino).or_default();
        let may = self.passthrough && !self.passthrough_refused.load(Ordering::Relaxed);
        if may && mode.cached == 0 && (mode.passthrough > 0 || state.pending_count() == 0) {
            if mode.backing.is_none() {
                match reply.open_backing(&file) {
                    Ok(id) => mode.backing = Some(id),
                    Err(e) => {
                        tracing::warn!("FUSE passthrough unavailable (registering a backing file failed: {e}); serving every open through lazyfs");
                        self.passthrough_refused.store(true, Ordering::Relaxed);
                    }
                }
            }
            if let Some(id) = &mode.backing {
                mode.passthrough += 1;
                mode.had_passthrough = true;
                metrics.passthrough_opens.inc();
                let fh = self.add_handle(file, state, ino, true);
                return reply.passthrough(fh, id);
            }
        }
        if mode.passthrough > 0 {
            // Cannot happen (backing is set while passthrough opens live);
            // a cached open now would fail with EIO in the kernel anyway.
            return match reply {
                OpenReply::Open(r) => r.error(Errno::EIO),
                OpenReply::Create(r, _) => r.error(Errno::EIO),
            };
        }
        mode.cached += 1;
        metrics.cached_opens.inc();
        let flags = if mode.had_passthrough { FopenFlags::empty() } else { FopenFlags::FOPEN_KEEP_CACHE };
        let fh = self.add_handle(file, state, ino, false);
        reply.cached(fh, flags)
    }

    /// Count a released handle out of its inode's [`IoMode`].
    fn release_mode(&self, h: &Handle) {
        let mut modes = lock(&self.io_modes);
        let Some(mode) = modes.get_mut(&h.ino) else { return };
        if h.passthrough {
            mode.passthrough = mode.passthrough.saturating_sub(1);
            if mode.passthrough == 0 {
                mode.backing = None;
            }
        } else {
            mode.cached = mode.cached.saturating_sub(1);
        }
        if mode.cached == 0 && mode.passthrough == 0 && !mode.had_passthrough {
            modes.remove(&h.ino);
        }
    }

    fn open_backing(path: &Path, flags: i32) -> io::Result<File> {
        // Always read-write (the kernel's writeback cache reads pages of
        // write-only files); never O_APPEND (the kernel gives offsets).
        let custom = flags & (libc::O_NOFOLLOW | libc::O_CLOEXEC);
        OpenOptions::new().read(true).write(true).custom_flags(custom).open(path)
    }

    fn do_setattr(&self, ino: INodeNo, mode: Option<u32>, size: Option<u64>, fh: Option<FileHandle>) -> Result<FileAttr, Errno> {
        // Through the handle given, else the path, else (unlinked but still
        // open) any open handle. Times are not kept (nothing reads them).
        let handle = fh.and_then(|fh| self.handle(fh).ok());
        let path = match &handle {
            Some(_) => None,
            None => match self.path_of(ino) {
                Ok(rel) => Some(self.made(&rel, "setattr")?),
                Err(e) => return self.setattr_unlinked(ino, mode, size).ok_or(e)?,
            },
        };
        if let Some(mode) = mode {
            let perms = std::fs::Permissions::from_mode(mode & 0o7777);
            match (&handle, &path) {
                (Some(h), _) => h.file.set_permissions(perms),
                (None, Some(p)) => std::fs::set_permissions(p, perms),
                (None, None) => Ok(()),
            }
            .map_err(errno)?;
        }
        if let Some(size) = size {
            match (&handle, &path) {
                (Some(h), _) => self.overlay.truncate(&h.state, &h.file, size).map_err(errno)?,
                (None, Some(p)) => {
                    let rel = self.path_of(ino)?;
                    let (_, state) = self.node_for(&rel);
                    let file = Self::open_backing(p, 0).map_err(errno)?;
                    self.overlay.truncate(&state, &file, size).map_err(errno)?;
                }
                (None, None) => {}
            }
        }
        let md = match (&handle, &path) {
            (Some(h), _) => h.file.metadata(),
            (None, Some(p)) => std::fs::symlink_metadata(p),
            (None, None) => return Err(Errno::ENOENT),
        }
        .map_err(errno)?;
        Ok(self.attr(ino.0, &md))
    }

    /// setattr of an unlinked node through any of its open handles.
    fn setattr_unlinked(&self, ino: INodeNo, mode: Option<u32>, size: Option<u64>) -> Option<Result<FileAttr, Errno>> {
        let h = self.any_handle_of(ino)?;
        let apply = || -> Result<FileAttr, Errno> {
            if let Some(mode) = mode {
                h.file.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777)).map_err(errno)?;
            }
            if let Some(size) = size {
                self.overlay.truncate(&h.state, &h.file, size).map_err(errno)?;
            }
            Ok(self.attr(ino.0, &h.file.metadata().map_err(errno)?))
        };
        Some(apply())
    }

    fn do_create(&self, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, flags: i32) -> Result<(FileAttr, File, u64, Arc<FileState>), Errno> {
        let rel = self.child(parent, name)?;
        let path = self.made(&rel, "create")?;
        let mut opts = OpenOptions::new();
        opts.read(true).write(true).mode(mode & !umask & 0o7777);
        if flags & libc::O_EXCL != 0 {
            opts.create_new(true);
        } else {
            opts.create(true);
        }
        let file = opts.open(&path).map_err(errno)?;
        let (ino, state) = self.node_for(&rel);
        if flags & libc::O_TRUNC != 0 {
            self.overlay.truncate(&state, &file, 0).map_err(errno)?;
        }
        let md = file.metadata().map_err(errno)?;
        Ok((self.attr(ino, &md), file, ino, state))
    }

    fn snapshot_dir(&self, ino: INodeNo) -> Result<Vec<(u64, FileType, OsString)>, Errno> {
        let rel = self.path_of(ino)?;
        let parent = match rel.parent() {
            Some(p) => lock(&self.table).by_path.get(p).copied().unwrap_or(ROOT),
            None => ROOT,
        };
        let mut entries = vec![(ino.0, FileType::Directory, OsString::from(".")), (parent, FileType::Directory, OsString::from(".."))];
        let mut names = Vec::new();
        for entry in std::fs::read_dir(self.backing(&rel)).map_err(errno)? {
            let entry = entry.map_err(errno)?;
            let kind = entry.file_type().ok().and_then(FileType::from_std).unwrap_or(FileType::RegularFile);
            names.push((entry.file_name(), kind));
        }
        names.extend(self.unmade.names_in(&rel).into_iter().map(|n| (n, FileType::RegularFile)));
        names.sort_by(|a, b| a.0.cmp(&b.0));
        names.dedup_by(|a, b| a.0 == b.0);
        for (name, kind) in names {
            let (child, _) = self.node_for(&rel.join(&name));
            entries.push((child, kind, name));
        }
        Ok(entries)
    }
}

impl fuser::Filesystem for LazyFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // The kernel enables passthrough only on a connection without the
        // writeback cache (process_init_reply): one or the other.
        let cache = if self.passthrough { None } else { Some(InitFlags::FUSE_WRITEBACK_CACHE) };
        for flag in cache.into_iter().chain([InitFlags::FUSE_PARALLEL_DIROPS, InitFlags::FUSE_ASYNC_DIO]) {
            if let Err(missing) = config.add_capabilities(flag) {
                tracing::warn!(?missing, "kernel does not offer a FUSE capability");
            }
        }
        if self.passthrough {
            // Stack depth 2: the backing directory may itself be on a
            // stacked filesystem (overlayfs in a container).
            let granted = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok() && config.set_max_stack_depth(2).is_ok();
            if !granted {
                tracing::warn!("the kernel does not offer FUSE passthrough; serving every open through lazyfs");
                self.passthrough = false;
            }
        }
        let _ = config.set_max_write(MAX_IO_BYTES);
        let _ = config.set_max_readahead(MAX_IO_BYTES);
        let _ = config.set_max_background(64);
        tracing::info!(capabilities = ?config.capabilities(), "FUSE session initialised");
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let rel = match self.child(parent, name) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let path = match self.made(&rel, "lookup") {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        match std::fs::symlink_metadata(path) {
            Ok(md) => {
                let (ino, _) = self.node_for(&rel);
                reply.entry(&TTL, &self.attr(ino, &md), Generation(0));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // A negative entry (node id 0) the kernel caches for TTL.
                let mut attr = self.attr(0, &match std::fs::symlink_metadata(&self.root) {
                    Ok(md) => md,
                    Err(_) => return reply.error(Errno::ENOENT),
                });
                attr.ino = INodeNo(0);
                reply.entry(&TTL, &attr, Generation(0));
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let md = match fh.and_then(|fh| self.handle(fh).ok()).or_else(|| self.path_of(ino).err().and(self.any_handle_of(ino))) {
            Some(h) => h.file.metadata(),
            None => match self.path_of(ino).and_then(|rel| self.made(&rel, "getattr")) {
                Ok(path) => std::fs::symlink_metadata(path),
                Err(e) => return reply.error(e),
            },
        };
        match md {
            Ok(md) => reply.attr(&TTL, &self.attr(ino.0, &md)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        match self.do_setattr(ino, mode, size, fh) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => {
                tracing::warn!(ino = ino.0, ?size, ?mode, "setattr failed: {e:?}");
                reply.error(e)
            }
        }
    }

    fn mkdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let result = (|| {
            let rel = self.child(parent, name)?;
            let path = self.made(&rel, "mkdir")?;
            std::fs::create_dir(&path).map_err(errno)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & !umask & 0o7777)).map_err(errno)?;
            let md = std::fs::symlink_metadata(&path).map_err(errno)?;
            let (ino, _) = self.node_for(&rel);
            Ok::<_, Errno>(self.attr(ino, &md))
        })();
        match result {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result = self.child(parent, name).and_then(|rel| {
            std::fs::remove_file(self.made(&rel, "unlink")?).map_err(errno)?;
            self.forget_path(&rel);
            Ok(())
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result = self.child(parent, name).and_then(|rel| {
            if self.unmade.any_in(&rel) {
                return Err(Errno::ENOTEMPTY);
            }
            std::fs::remove_dir(self.backing(&rel)).map_err(errno)?;
            self.forget_path(&rel);
            Ok(())
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(&self, _req: &Request, parent: INodeNo, name: &OsStr, newparent: INodeNo, newname: &OsStr, flags: RenameFlags, reply: ReplyEmpty) {
        let result = (|| {
            let (from, to) = (self.child(parent, name)?, self.child(newparent, newname)?);
            if flags.bits() & !libc::RENAME_NOREPLACE != 0 {
                return Err(Errno::EINVAL);
            }
            self.made(&from, "rename")?;
            self.made(&to, "rename")?;
            if self.unmade.any_in(&to) {
                return Err(Errno::ENOTEMPTY);
            }
            self.unmade.make_under(&from).map_err(errno)?;
            if flags.bits() & libc::RENAME_NOREPLACE != 0 && std::fs::symlink_metadata(self.backing(&to)).is_ok() {
                return Err(Errno::EEXIST);
            }
            std::fs::rename(self.backing(&from), self.backing(&to)).map_err(errno)?;
            self.move_path(&from, &to);
            Ok(())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let result = (|| {
            let rel = self.path_of(ino)?;
            let file = Self::open_backing(&self.made(&rel, "open")?, flags.0).map_err(errno)?;
            let (_, state) = self.node_for(&rel);
            Ok::<_, Errno>((file, state))
        })();
        match result {
            Ok((file, state)) => self.reply_open(ino.0, file, state, OpenReply::Open(reply)),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        let result = self.handle(fh).and_then(|h| self.overlay.read(&h.state, &h.file, offset, size).map_err(errno));
        if let Err(e) = &result {
            tracing::warn!(ino = _ino.0, fh = fh.0, offset, size, "read failed: {e:?}");
        }
        match result {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        let result = self.handle(fh).and_then(|h| self.overlay.write(&h.state, &h.file, offset, data).map_err(errno));
        if let Err(e) = &result {
            // The kernel reports a failed writeback as EIO at close/fsync.
            tracing::warn!(ino = _ino.0, fh = fh.0, offset, len = data.len(), "write failed: {e:?}");
        }
        match (result, u32::try_from(data.len())) {
            (Ok(()), Ok(n)) => reply.written(n),
            (Ok(()), Err(_)) => reply.error(Errno::EINVAL),
            (Err(e), _) => reply.error(e),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: fuser::LockOwner, reply: ReplyEmpty) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // The files lock is released before io_modes is taken (reply_open
        // takes them the other way round).
        let handle = lock(&self.files).remove(&fh.0);
        if let Some(h) = handle {
            self.release_mode(&h);
        }
        reply.ok();
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.snapshot_dir(ino) {
            Ok(entries) => {
                let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
                lock(&self.dirs).insert(fh, Arc::new(entries));
                reply.opened(FileHandle(fh), FopenFlags::empty());
            }
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let Some(entries) = lock(&self.dirs).get(&fh.0).cloned() else { return reply.error(Errno::EBADF) };
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), i as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        lock(&self.dirs).remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match nix::sys::statvfs::statvfs(&self.root) {
            Ok(s) => reply.statfs(
                s.blocks(),
                s.blocks_free(),
                s.blocks_available(),
                s.files(),
                s.files_free(),
                s.block_size() as u32,
                s.name_max() as u32,
                s.fragment_size() as u32,
            ),
            Err(e) => reply.error(Errno::from_i32(e as i32)),
        }
    }

    fn getxattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, _size: u32, reply: fuser::ReplyXattr) {
        // No extended attributes (the kernel stops asking after ENOSYS).
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: fuser::ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn create(&self, _req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, flags: i32, reply: ReplyCreate) {
        match self.do_create(parent, name, mode, umask, flags) {
            Ok((attr, file, ino, state)) => self.reply_open(ino, file, state, OpenReply::Create(reply, attr)),
            Err(e) => reply.error(e),
        }
    }
}
