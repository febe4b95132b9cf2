// Package imagestore keeps the archive's volume images: the base image of
// each volume, restored snapshots and cold snapshots (system.md §5.2). It
// replaces the logical volumes walb-tools keeps in an LVM volume group by
// named images behind a small interface, Store, so that the archive runs on
// plain files and another backend (LVM thin volumes) can be added later
// without touching the archive.
//
// # Model
//
// A Store holds named images of fixed size. An Image is an io.ReaderAt and
// io.WriterAt over its bytes, with Size, Sync (make completed writes
// durable), Punch (deallocate a range; it reads as zeros afterwards) and
// Close. Images grow only, with Store.Resize, as walb-tools' resize does;
// an open Image keeps the size it had when opened. Path gives a name a
// path that external tools can open: the file for Dir, which is what the
// archive exports over NBD (nbd.OpenFileBackend) or hands to qemu-img.
//
// Names are 1 to MaxNameLen bytes of [0-9A-Za-z_.+-], not starting with '.'
// or '-' and without "..". walb-tools' names fit unchanged: wb_VOL (the
// base), wr_VOL_GID (restored), wc_VOL_GID (cold), wb_VOL_GID_tmp
// (cold-to-base). Names starting with '.' are the store's own: temporary
// images are TempPrefix + target + "-" + 8 random characters, so they can
// never collide with an image, List never shows them, and CleanTemps finds
// them by prefix after a crash.
//
// # Durability
//
// Every change to which images exist, or to their sizes, is durable when
// the call returns nil, and a crash leaves it all done or not done at all:
//
//	call             steps                                          after a crash
//	Create           temp file, ftruncate, fsync, rename            no image, or the
//	                 (no replace), fsync dir                        zero image
//	Clone            temp file, copy, fsync, rename (no replace),   no dst, or the
//	                 fsync dir                                      complete copy
//	CloneTemp+Commit temp file, copy, caller's writes, fsync,       old target, or the
//	                 rename over the target, fsync dir              complete new image
//	Rename           renameat2(RENAME_NOREPLACE), fsync dir         old name or new name
//	Remove           unlink, fsync dir                              image, or none
//	Resize           ftruncate up, fsync                            old or new size
//
// Data written through an Image is durable after Image.Sync (fdatasync).
// Leftover temporary files are harmless and are removed by CleanTemps,
// which the archive calls once at startup, before any CloneTemp (it is the
// counterpart of walb-tools deleting every wr_*_tmp at restart, §7).
//
// # Applying diffs without a half-applied base
//
// CloneForApply runs an apply on a clone of the base and renames the clone
// over the base:
//
//	crash point                          base afterwards         left over
//	while cloning or applying            old                     temp (CleanTemps)
//	after fsync, before the rename       old                     temp (CleanTemps)
//	after the rename, before dir fsync   old or new, each whole  nothing, or temp
//	after Commit returned                new                     nothing
//
// Because rename(2) is atomic and the clone is fsynced before it, no crash
// can expose a base with only some of the diffs applied. The archive still
// brackets the apply with its applying state (§5.3: persist beginApplying,
// apply, persist endApplying); a crash between the rename and endApplying
// leaves the state saying "applying" over an image that is already at its
// end snapshot, and reapplying the minimum list to it is idempotent. Open
// Images of the old base (a restore in progress) keep reading the old
// inode until they are closed.
//
// Restores use the same primitive with a new target: CloneTemp(base,
// "wr_VOL_GID"), apply the restore list, Commit.
//
// On a file system with reflink the clone costs a few milliseconds and
// almost no space, whatever the image size; without it the clone is a
// copy of the allocated data, and an archive may prefer walb-tools' way of
// applying in place under the applying state (Capabilities().Reflink tells
// which).
//
// # Reflink and the fallback copy
//
// OpenDir probes the directory once: it clones a 64 KiB probe file with
// FICLONE and punches a hole in it, and names the file system from its
// statfs magic (xfs, btrfs, ext4, tmpfs, overlay...). Capabilities reports
// the result.
//
// Where FICLONE works (XFS with reflink=1, btrfs, bcachefs, OCFS2), Clone
// shares the source's extents with FICLONERANGE in 1 GiB pieces, so that a
// long clone of a fragmented file still notices a cancelled context; holes
// stay holes and later writes to either file copy only the blocks they
// touch. If the kernel refuses a particular pair of files (EOPNOTSUPP,
// EINVAL, EXDEV: btrfs nodatacow files, XFS realtime files), Clone falls
// back to copying.
//
// The copy walks the source's data extents with SEEK_DATA/SEEK_HOLE into a
// file already truncated to the full size, so holes are never written and
// the copy takes no more space than the source. Data extents go through
// copy_file_range (in-kernel, server-side on NFS), or through pread/pwrite
// with a 1 MiB buffer where that is refused; the buffered path also leaves
// all-zero 4 KiB blocks as holes. Memory stays bounded by that buffer.
// DirOptions.NoReflink forces the buffered physical copy, because the
// kernel turns copy_file_range into a reflink on XFS and btrfs.
//
// Punch uses fallocate(PUNCH_HOLE|KEEP_SIZE) and writes zeros where the
// file system cannot punch.
//
// # An LVM backend
//
// A volume-manager Store would map the interface this way: Create is
// lvcreate of a thin volume (thin volumes read as zeros), Clone is a
// writable thin snapshot (block sharing, like reflink; Capabilities
// Reflink true), or a thick LV plus dd in thick mode; Path is
// /dev/VG/NAME; Punch is BLKDISCARD with zeroing (or BLKZEROOUT); Sync is
// fdatasync on the device; Resize is lvextend; Remove is lvremove; Rename
// is lvrename, which already refuses an existing target. CloneTemp makes
// the snapshot under a temporary LV name; since LVM cannot rename over an
// existing LV, its Commit renames the old target to a second temporary
// name, the new LV to the target, then removes the old one, and its
// CleanTemps completes that sequence: a temporary LV marked as the old
// target is removed if the target exists and renamed back otherwise. This
// is the cold-to-base recovery of §5.3 in general form, so the archive
// keeps the same contract on either backend.
//
// # Concurrency
//
// Dir methods and Image reads and writes are safe for concurrent use.
// Operations on the same name must be serialized by the caller, which the
// archive's per-volume action locks do; in particular a source must not be
// written while it is being cloned. The directory should hold only images:
// List reports every regular file with a valid name.
package imagestore
