//! Writer of the cpio "newc" format, the format the Linux kernel unpacks as its initramfs
//! (`Documentation/driver-api/early-userspace/buffer-format.rst`).
//!
//! Each entry is a 110-byte ASCII header of hexadecimal fields, the NUL-terminated name padded
//! to a multiple of 4 bytes, then the data padded to a multiple of 4 bytes. The archive ends
//! with the entry `TRAILER!!!`. The kernel accepts several archives concatenated, so a cached
//! base archive and a per-run archive can simply be joined.

use std::collections::BTreeSet;
use std::io::{self, Write};

/// Magic number of the "newc" variant (no checksums).
const NEWC_MAGIC: &str = "070701";
/// Name of the entry that ends an archive.
const TRAILER_NAME: &str = "TRAILER!!!";
/// File type bits of `st_mode`.
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

/// Streams entries into a newc archive, adding every missing parent directory of an entry
/// before the entry itself so the kernel never meets a file whose folder does not exist.
pub struct CpioWriter<W: Write> {
    out: W,
    written_bytes: u64,
    next_inode: u32,
    directories: BTreeSet<String>,
}

impl<W: Write> CpioWriter<W> {
    /// Starts an archive on `out`.
    pub fn new(out: W) -> Self {
        CpioWriter {
            out,
            written_bytes: 0,
            next_inode: 1,
            directories: BTreeSet::new(),
        }
    }

    /// Adds a directory with permission bits `mode` (and its missing parents).
    pub fn add_directory(&mut self, path: &str, mode: u32) -> io::Result<()> {
        let name = normalize(path)?;
        self.add_parents(&name)?;
        if self.directories.insert(name.clone()) {
            self.write_entry(&name, S_IFDIR | (mode & 0o7777), &[])?;
        }
        Ok(())
    }

    /// Adds a regular file with permission bits `mode` and contents `data`.
    pub fn add_file(&mut self, path: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        let name = normalize(path)?;
        self.add_parents(&name)?;
        self.write_entry(&name, S_IFREG | (mode & 0o7777), data)
    }

    /// Adds a regular file whose `size` bytes of contents are read from `contents`, so that
    /// large files are streamed rather than held in memory.
    pub fn add_file_from(
        &mut self,
        path: &str,
        mode: u32,
        size: u64,
        contents: impl io::Read,
    ) -> io::Result<()> {
        let name = normalize(path)?;
        self.add_parents(&name)?;
        self.write_header(&name, S_IFREG | (mode & 0o7777), size)?;
        let copied = io::copy(&mut contents.take(size), &mut self.out)?;
        if copied != size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{path}: expected {size} bytes, read {copied}"),
            ));
        }
        self.written_bytes += copied;
        self.write_padded(&[])
    }

    /// Adds a symbolic link at `path` that points to `target`.
    pub fn add_symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        let name = normalize(path)?;
        self.add_parents(&name)?;
        self.write_entry(&name, S_IFLNK | 0o777, target.as_bytes())
    }

    /// Writes the trailer and returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        self.write_entry(TRAILER_NAME, 0, &[])?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn add_parents(&mut self, name: &str) -> io::Result<()> {
        let mut end = 0;
        while let Some(offset) = name[end..].find('/') {
            end += offset;
            let parent = &name[..end];
            if self.directories.insert(parent.to_owned()) {
                self.write_entry(parent, S_IFDIR | 0o755, &[])?;
            }
            end += 1;
        }
        Ok(())
    }

    fn write_entry(&mut self, name: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        self.write_header(name, mode, data.len() as u64)?;
        self.write_padded(&[data])
    }

    fn write_header(&mut self, name: &str, mode: u32, size: u64) -> io::Result<()> {
        let file_size = u32::try_from(size).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name}: larger than 4 GiB"),
            )
        })?;
        let inode = if name == TRAILER_NAME {
            0
        } else {
            self.next_inode
        };
        self.next_inode += 1;
        let links = if mode & S_IFDIR != 0 { 2 } else { 1 };
        let name_size = name.len() + 1;
        // Fields in order: ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor,
        // rdevmajor, rdevminor, namesize, check. A zero mtime keeps archives reproducible.
        let header = format!(
            "{NEWC_MAGIC}{inode:08x}{mode:08x}{:08x}{:08x}{links:08x}{:08x}{file_size:08x}\
             {:08x}{:08x}{:08x}{:08x}{name_size:08x}{:08x}",
            0, 0, 0, 0, 0, 0, 0, 0
        );
        self.write_padded(&[header.as_bytes(), name.as_bytes(), &[0]])
    }

    /// Writes `parts` back to back, then zero bytes up to the next multiple of 4 of the whole
    /// archive offset.
    fn write_padded(&mut self, parts: &[&[u8]]) -> io::Result<()> {
        for part in parts {
            self.out.write_all(part)?;
            self.written_bytes += part.len() as u64;
        }
        let padding = (4 - (self.written_bytes % 4) as usize) % 4;
        self.out.write_all(&[0; 3][..padding])?;
        self.written_bytes += padding as u64;
        Ok(())
    }
}

/// Turns an absolute or relative path into the archive's relative form (`bin/busybox`).
fn normalize(path: &str) -> io::Result<String> {
    let name = path.trim_start_matches('/').trim_end_matches('/');
    let invalid = name.is_empty()
        || name
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..")
        || name.contains('\0');
    if invalid {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid path in the initramfs: {path:?}"),
        ));
    }
    Ok(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splits an archive back into (name, mode, data) entries, checking alignment on the way.
    fn parse(archive: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let field = |header: &[u8], index: usize| {
            let start = 6 + index * 8;
            let text = std::str::from_utf8(&header[start..start + 8]).unwrap();
            u32::from_str_radix(text, 16).unwrap() as usize
        };
        let align = |offset: usize| offset.div_ceil(4) * 4;
        let mut entries = Vec::new();
        let mut offset = 0;
        loop {
            let header = &archive[offset..offset + 110];
            assert_eq!(&header[..6], NEWC_MAGIC.as_bytes());
            let mode = field(header, 1) as u32;
            let file_size = field(header, 6);
            let name_size = field(header, 11);
            let name_start = offset + 110;
            let name = std::str::from_utf8(&archive[name_start..name_start + name_size - 1])
                .unwrap()
                .to_owned();
            let data_start = align(name_start + name_size);
            let data = archive[data_start..data_start + file_size].to_vec();
            offset = align(data_start + file_size);
            if name == TRAILER_NAME {
                assert_eq!(offset, archive.len());
                return entries;
            }
            entries.push((name, mode, data));
        }
    }

    #[test]
    fn cpio_file_round_trips_with_parents() {
        let mut writer = CpioWriter::new(Vec::new());
        writer
            .add_file("/usr/lib/x/libz.so", 0o644, b"12345")
            .unwrap();
        let entries = parse(&writer.finish().unwrap());
        let names: Vec<&str> = entries.iter().map(|entry| entry.0.as_str()).collect();
        assert_eq!(names, ["usr", "usr/lib", "usr/lib/x", "usr/lib/x/libz.so"]);
        assert_eq!(entries[0].1, S_IFDIR | 0o755);
        assert_eq!(entries[3].1, S_IFREG | 0o644);
        assert_eq!(entries[3].2, b"12345");
    }

    #[test]
    fn cpio_directory_written_once() {
        let mut writer = CpioWriter::new(Vec::new());
        writer.add_directory("/bin", 0o755).unwrap();
        writer.add_file("/bin/sh", 0o755, b"#!").unwrap();
        writer.add_directory("/bin/", 0o755).unwrap();
        let entries = parse(&writer.finish().unwrap());
        assert_eq!(entries.len(), 2);
    }

    #[test]
    fn cpio_streamed_file_matches_buffered() {
        let mut buffered = CpioWriter::new(Vec::new());
        buffered.add_file("/a", 0o600, b"abcdefg").unwrap();
        let mut streamed = CpioWriter::new(Vec::new());
        streamed
            .add_file_from("/a", 0o600, 7, &mut &b"abcdefg"[..])
            .unwrap();
        assert_eq!(buffered.finish().unwrap(), streamed.finish().unwrap());
    }

    #[test]
    fn cpio_streamed_file_short_read_fails() {
        let mut writer = CpioWriter::new(Vec::new());
        assert!(writer
            .add_file_from("/a", 0o600, 8, &mut &b"abc"[..])
            .is_err());
    }

    #[test]
    fn cpio_symlink_stores_target() {
        let mut writer = CpioWriter::new(Vec::new());
        writer.add_symlink("/bin/sh", "busybox").unwrap();
        let entries = parse(&writer.finish().unwrap());
        assert_eq!(entries[1].1, S_IFLNK | 0o777);
        assert_eq!(entries[1].2, b"busybox");
    }

    #[test]
    fn cpio_rejects_parent_components() {
        let mut writer = CpioWriter::new(Vec::new());
        assert!(writer.add_file("/lib/../etc/passwd", 0o644, b"").is_err());
        assert!(writer.add_file("/", 0o644, b"").is_err());
    }

    #[test]
    fn cpio_empty_archive_is_trailer_only() {
        let archive = CpioWriter::new(Vec::new()).finish().unwrap();
        assert_eq!(archive.len() % 4, 0);
        assert!(parse(&archive).is_empty());
    }
}
