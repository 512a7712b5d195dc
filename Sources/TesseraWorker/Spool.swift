// One shard's spool (docs/operations.md, "The worker spool"): the output its computation produced that the worker's
// state machine cannot take yet, because the coordinator is away or slower than the shard (too many metric batches
// or blob bytes unacknowledged). It keeps that output in order: in memory up to `memoryBytes`, then in an append-only
// file under the worker's data dir; the loop hands it to the machine, oldest first, as acknowledgements make room.
// Only when the file reaches `diskBytes` (or the disk is full) does the loop stop taking output from the shard's
// channel, so only then does the computation wait. The file is emptied (truncated) each time it has been read to
// its end, and deleted with the shard.
//
// Order: `head` (memory) is read first, then the file, then `tail` — output that arrived while the file had records
// but could not be written to it (the disk is full), which must not overtake the file's records.

import Foundation
import Logging
import TesseraProtocol
import TesseraWorkerCore

final class Spool {
    struct Limits: Sendable {
        var memoryBytes: Int
        var diskBytes: Int
    }

    typealias Output = WorkerStateMachine.ComputeOutput

    let path: String
    let limits: Limits
    private let logger: Logger
    private var head: [Output] = []
    private var headStart = 0
    private var tail: [Output] = []
    private var memoryBytes = 0
    private var fd: Int32 = -1
    private var writeOffset: Int64 = 0
    private var readOffset: Int64 = 0
    private var fileRecords = 0
    /// A write failed (ENOSPC or another error): nothing more is written until the file has been read to its end.
    private var writeFailed = false
    /// Bytes written to the file since the shard started (for the log and tests).
    private(set) var bytesSpooled: Int64 = 0

    init(path: String, limits: Limits, logger: Logger) {
        self.path = path
        self.limits = limits
        self.logger = logger
    }

    deinit { close() }

    var isEmpty: Bool { headStart == head.count && fileRecords == 0 && tail.isEmpty }

    /// Whether the loop may take more output from the shard's channel: false once the file reached its cap or could
    /// not be written, until it has been read back.
    var acceptsMore: Bool { !writeFailed && writeOffset < Int64(limits.diskBytes) }

    func append(_ o: Output) {
        let weight = SpoolRecord.memoryBytes(o)
        if fileRecords == 0 && tail.isEmpty && (memoryBytes + weight <= limits.memoryBytes) {
            head.append(o)
            memoryBytes += weight
            return
        }
        if !writeFailed && write(SpoolRecord.encode(o)) {
            fileRecords += 1
            return
        }
        // Not written: kept in memory after the file's records (the loop has stopped taking output meanwhile).
        tail.append(o)
        memoryBytes += weight
    }

    /// The oldest output not yet handed over, or nil.
    func next() -> Output? {
        if headStart < head.count {
            let o = head[headStart]
            headStart += 1
            memoryBytes -= SpoolRecord.memoryBytes(o)
            if headStart == head.count {
                head.removeAll(keepingCapacity: false)
                headStart = 0
            }
            return o
        }
        if fileRecords > 0 {
            guard let o = read() else {
                // Unreadable (the file was damaged under us): what it held is lost to this attempt. Nothing is sent
                // that is wrong; the shard cannot finish correctly, so fail it (the coordinator re-runs it).
                logger.error("spool file unreadable; failing the shard", metadata: ["path": "\(path)"])
                fileRecords = 0
                resetFile()
                var failed = Output(step: 0)
                failed.outcome = .failed(reason: "the worker's spool file \(path) could not be read back", failure: .infrastructure)
                return failed
            }
            fileRecords -= 1
            if fileRecords == 0 { resetFile() }
            return o
        }
        if !tail.isEmpty {
            // The file is read to its end (or never had a record): writing may be tried again.
            head = tail
            tail = []
            resetFile()
            return next()
        }
        return nil
    }

    /// Deletes the file.
    func close() {
        if fd >= 0 {
            Foundation.close(fd)
            unlink(path)
            fd = -1
        }
    }

    // MARK: File

    private func write(_ payload: [UInt8]) -> Bool {
        if fd < 0 {
            fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
            guard fd >= 0 else {
                logger.warning("cannot create the spool file", metadata: ["path": "\(path)", "error": "\(String(cString: strerror(errno)))"])
                writeFailed = true
                return false
            }
            logger.info("coordinator not keeping up: spooling the shard's output to disk", metadata: ["path": "\(path)"])
        }
        var record = [UInt8](repeating: 0, count: 4)
        withUnsafeBytes(of: UInt32(payload.count).littleEndian) { for k in 0..<4 { record[k] = $0[k] } }
        record += payload
        var done = 0
        while done < record.count {
            let n = record.withUnsafeBytes { pwrite(fd, $0.baseAddress! + done, record.count - done, off_t(writeOffset) + off_t(done)) }
            if n < 0 {
                if errno == EINTR { continue }
                logger.warning(
                    "spool write failed; the shard waits until its spool is read back",
                    metadata: ["path": "\(path)", "error": "\(String(cString: strerror(errno)))"])
                _ = ftruncate(fd, off_t(writeOffset))
                writeFailed = true
                return false
            }
            done += n
        }
        writeOffset += Int64(record.count)
        bytesSpooled += Int64(record.count)
        return true
    }

    private func read() -> Output? {
        func pread(_ n: Int, at offset: Int64) -> [UInt8]? {
            var b = [UInt8](repeating: 0, count: n)
            var done = 0
            while done < n {
                let r = b.withUnsafeMutableBytes { Foundation.pread(fd, $0.baseAddress! + done, n - done, off_t(offset) + off_t(done)) }
                if r < 0 && errno == EINTR { continue }
                guard r > 0 else { return nil }
                done += r
            }
            return b
        }
        guard let len = pread(4, at: readOffset) else { return nil }
        let n = Int(UInt32(len[0]) | UInt32(len[1]) << 8 | UInt32(len[2]) << 16 | UInt32(len[3]) << 24)
        guard let payload = pread(n, at: readOffset + 4), let o = try? SpoolRecord.decode(payload) else { return nil }
        readOffset += 4 + Int64(n)
        return o
    }

    /// Everything in the file was read: start it again from 0 (it never grows past what was unread at one time).
    private func resetFile() {
        if fd >= 0 { _ = ftruncate(fd, 0) }
        writeOffset = 0
        readOffset = 0
        writeFailed = false
    }
}
