// The content-addressed store for checkpoints, sample files and binary shard results
// (ARCHITECTURE.md §Job model: `<data-dir>/checkpoints/ab/abcdef…`).
//
// A transfer is written to `<data-dir>/tmp/<id>.part`, hashed as it arrives, fsynced, then renamed into place and
// its directory fsynced: a blob path either holds the whole, verified blob or nothing.

import Crypto
import Foundation
import TesseraCore

public struct BlobStoreError: Error, Sendable, CustomStringConvertible {
    public var message: String
    /// The errno of a failed system call, if that is what failed.
    public var errno: Int32?
    public init(_ message: String, errno: Int32? = nil) {
        self.message = message
        self.errno = errno
    }
    public var description: String { message }
    /// The file system is out of space or quota: nothing is wrong with the blob, and the same write can succeed
    /// once space is freed (the transfer is deferred, SPEC §6.5).
    public var isOutOfSpace: Bool { errno == ENOSPC || errno == EDQUOT }
}

public final class BlobStore: @unchecked Sendable {
    // @unchecked: used only from the coordinator loop thread.
    public let root: String

    public init(dataDir: String) throws {
        root = dataDir
        for d in ["checkpoints", "tmp"] {
            try FileManager.default.createDirectory(atPath: "\(dataDir)/\(d)", withIntermediateDirectories: true)
        }
        // Partial transfers from a previous run cannot be resumed (the sender restarts them): remove them.
        for f in (try? FileManager.default.contentsOfDirectory(atPath: "\(dataDir)/tmp")) ?? [] where f.hasSuffix(".part") {
            try? FileManager.default.removeItem(atPath: "\(dataDir)/tmp/\(f)")
        }
    }

    /// Path relative to the data dir, as recorded in PostgreSQL.
    public static func relativePath(sha256: String) -> String {
        "checkpoints/\(sha256.prefix(2))/\(sha256)"
    }

    public func absolutePath(relative: String) -> String { "\(root)/\(relative)" }

    public func exists(sha256: String) -> Bool {
        FileManager.default.fileExists(atPath: absolutePath(relative: Self.relativePath(sha256: sha256)))
    }

    /// The size of a stored blob, or nil when the store does not have it.
    public func size(sha256: String) -> UInt64? {
        guard JobFile.validSHA256Text(sha256) else { return nil }
        var st = stat()
        guard stat(absolutePath(relative: Self.relativePath(sha256: sha256)), &st) == 0 else { return nil }
        return UInt64(st.st_size)
    }

    /// `spec` with the contents of its files (`files:`) read from the store. Each must be named by sha256 and size
    /// (as a stored spec does) and be in the store; the contents are hashed again on the way.
    public func loadingFiles(_ spec: JobSpec) throws -> JobSpec {
        guard !spec.files.isEmpty else { return spec }
        return try spec.loadingFiles({ f in
            guard let sha = f.sha256, let size = f.size else {
                throw spec.source.error("files.\(f.name)", "files.\(f.name) (\(f.path)) has no sha256 and size: upload the file with blob.upload and name it {path, sha256, size} (tessera submit does both)")
            }
            guard self.size(sha256: sha) == UInt64(size) else {
                throw spec.source.error("files.\(f.name)", "files.\(f.name) (\(f.path)): the coordinator has no blob \(sha) of \(size) bytes; upload it first (blob.upload; tessera submit does)")
            }
            return try readAll(relativePath: Self.relativePath(sha256: sha))
        }, sha256: Self.sha256Hex)
    }

    /// Reads `length` bytes at `offset` of a stored blob; returns the bytes and the blob's total size.
    public func read(sha256: String, offset: UInt64, length: Int) throws -> ([UInt8], UInt64) {
        guard sha256.count == 64, sha256.allSatisfy({ $0.isHexDigit && !$0.isUppercase }) else {
            throw BlobStoreError("not a sha256: '\(sha256)'")
        }
        let path = absolutePath(relative: Self.relativePath(sha256: sha256))
        guard let fh = FileHandle(forReadingAtPath: path) else { throw BlobStoreError("no blob \(sha256)") }
        defer { try? fh.close() }
        let size = try fh.seekToEnd()
        // At or past the end: no bytes and the total, which is how a reader learns it is done (SPEC §6.7).
        guard offset < size else { return ([], size) }
        try fh.seek(toOffset: offset)
        let data = try fh.read(upToCount: length) ?? Data()
        return ([UInt8](data), size)
    }

    public func readAll(relativePath: String) throws -> [UInt8] {
        guard let data = FileManager.default.contents(atPath: absolutePath(relative: relativePath)) else {
            throw BlobStoreError("cannot read \(relativePath)")
        }
        return [UInt8](data)
    }

    /// One incoming blob.
    public final class Transfer {
        public let totalSize: UInt64
        public private(set) var received: UInt64 = 0
        let tmpPath: String
        let fd: Int32
        var hasher = SHA256()

        init(tmpPath: String, totalSize: UInt64) throws {
            self.tmpPath = tmpPath
            self.totalSize = totalSize
            fd = open(tmpPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
            guard fd >= 0 else { throw BlobStoreError("cannot create \(tmpPath): \(String(cString: strerror(errno)))", errno: errno) }
        }

        /// Appends the chunk at `offset`. A chunk already received (a resend) is ignored; a gap is an error.
        public func append(offset: UInt64, data: [UInt8]) throws {
            if offset + UInt64(data.count) <= received { return }
            guard offset == received else {
                throw BlobStoreError("chunk at offset \(offset) but \(received) bytes received so far")
            }
            guard received + UInt64(data.count) <= totalSize else {
                throw BlobStoreError("chunk runs past the announced size \(totalSize)")
            }
            try data.withUnsafeBytes { buf in
                var done = 0
                while done < buf.count {
                    let n = write(fd, buf.baseAddress! + done, buf.count - done)
                    if n < 0 {
                        if errno == EINTR { continue }
                        throw BlobStoreError("write to \(tmpPath) failed: \(String(cString: strerror(errno)))", errno: errno)
                    }
                    done += n
                }
            }
            hasher.update(data: data)
            received += UInt64(data.count)
            // Start writing back what has arrived, so the fsync at the end waits for the last few MiB rather than
            // the whole blob (on Linux POSIX_FADV_DONTNEED starts writeback of the range without waiting for it).
            if received - writtenBack >= Self.writebackStep || received == totalSize {
                _ = posix_fadvise(fd, off_t(writtenBack), off_t(received - writtenBack), POSIX_FADV_DONTNEED)
                writtenBack = received
            }
        }

        /// Bytes handed to writeback so far, and how many more to collect before the next hand-over.
        private var writtenBack: UInt64 = 0
        static let writebackStep: UInt64 = 8 << 20

        func abort() {
            close(fd)
            unlink(tmpPath)
        }
    }

    private var nextTransfer: UInt64 = 0

    /// Bytes the data dir's file system has free for this process (statvfs `f_bavail`), or nil if it cannot say.
    public func freeBytes() -> UInt64? {
        var st = statvfs()
        guard statvfs(root, &st) == 0 else { return nil }
        return UInt64(st.f_bavail) * UInt64(st.f_frsize)
    }

    public func beginTransfer(totalSize: UInt64) throws -> Transfer {
        nextTransfer += 1
        return try Transfer(tmpPath: "\(root)/tmp/\(getpid())-\(nextTransfer).part", totalSize: totalSize)
    }

    /// Verifies size and SHA-256, fsyncs, renames into the store and fsyncs the directory. Returns the relative path.
    public func finish(_ t: Transfer, expectedSHA256: String) throws -> String {
        guard t.received == t.totalSize else {
            t.abort()
            throw BlobStoreError("blob incomplete: \(t.received) of \(t.totalSize) bytes")
        }
        let digest = t.hasher.finalize().map { String(format: "%02x", $0) }.joined()
        guard digest == expectedSHA256 else {
            t.abort()
            throw BlobStoreError("sha256 mismatch: announced \(expectedSHA256), received \(digest)")
        }
        guard fsync(t.fd) == 0 else {
            let e = errno
            t.abort()
            throw BlobStoreError("fsync of \(t.tmpPath) failed: \(String(cString: strerror(e)))", errno: e)
        }
        close(t.fd)
        let rel = Self.relativePath(sha256: digest)
        let dir = "\(root)/checkpoints/\(digest.prefix(2))"
        if mkdir(dir, 0o755) != 0 && errno != EEXIST {
            let e = errno
            unlink(t.tmpPath)
            throw BlobStoreError("cannot create \(dir): \(String(cString: strerror(e)))", errno: e)
        }
        guard rename(t.tmpPath, "\(root)/\(rel)") == 0 else {
            let e = errno
            unlink(t.tmpPath)
            throw BlobStoreError("rename into the store failed: \(String(cString: strerror(e)))", errno: e)
        }
        let dfd = open(dir, O_RDONLY)
        if dfd >= 0 {
            fsync(dfd)
            close(dfd)
        }
        return rel
    }

    public func abort(_ t: Transfer) { t.abort() }

    /// Stores bytes directly (used by tests and local tools).
    public func put(_ bytes: [UInt8]) throws -> (sha256: String, path: String) {
        let sha = Self.sha256Hex(bytes)
        let t = try beginTransfer(totalSize: UInt64(bytes.count))
        try t.append(offset: 0, data: bytes)
        return (sha, try finish(t, expectedSHA256: sha))
    }

    public static func sha256Hex(_ bytes: [UInt8]) -> String {
        SHA256.hash(data: bytes).map { String(format: "%02x", $0) }.joined()
    }
}
