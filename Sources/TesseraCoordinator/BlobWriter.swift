// The blob service: CHUNK transfers written to temp files, hashed, fsynced and renamed into the content-addressed
// store on a thread of its own, so a 256 MiB checkpoint's fsync never delays a heartbeat (protocol/SPEC.md §6.5).
// The state machine has already fenced each chunk (attempt and sender); the last chunk's registration in
// PostgreSQL goes through the writer, and only its commit sends the final ACK.
//
// Out of space (ENOSPC, EDQUOT, or less free space than the transfer needs before it starts): the transfer's temp
// file is deleted and the chunk is answered `deferred` (SPEC §6.5); the worker keeps the blob and sends it again
// later, so a full disk costs waiting, not recomputation. What is deferred is published in `SharedStatus.storage`
// (`tessera workers`, `tessera status`). A transfer that gets no chunk for 5 minutes (its sender went away without
// a DISCONNECT, or was fenced mid-transfer) is discarded, so no temp file outlives its sender.

import Foundation
import TesseraCore
import Logging
import Synchronization
import TesseraCoordinatorCore
import TesseraModel
import TesseraProtocol

final class BlobWriter: @unchecked Sendable {
    // @unchecked: `transfers` is touched only by the blob thread.
    enum Work: Sendable {
        case chunk([UInt8], BlobChunk)
        case drop([UInt8])
        /// One transfer of a peer is void (its attempt was fenced): delete its temp file now.
        case dropOne([UInt8], transferID: UInt64)
        /// Discard transfers idle for longer than `idleLimit` (posted on the coordinator's tick).
        case sweep
    }

    private struct Key: Hashable {
        var peer: [UInt8]
        var id: UInt64
    }

    /// The largest transfer of each kind (SPEC §6.5). Chunks are frames (≤ 64 MiB each), but a transfer is a file
    /// written chunk by chunk, so only what reads a blob whole bounds it: a merge reads each result into memory
    /// (§12: 64 MiB). Checkpoints are only read back in ranges (FETCH, `blob.read`), so they may be as large as a
    /// model's state (issue 9 benchmarks 256 MiB) up to 1 GiB; samples and results keep 64 MiB.
    static func maxTransferBytes(_ kind: BlobKind) -> UInt64 {
        kind == .checkpoint ? 1 << 30 : UInt64(WireCodec.limits.maxBlobBytes)
    }

    private let queue = WorkQueue<Work>()
    private let blobs: BlobStore
    private let inbox: Inbox
    private let status: SharedStatus
    private let logger: Logger
    private struct Open {
        var transfer: BlobStore.Transfer
        var ref: ShardRef
        var kind: BlobKind
        var step: Int64
        var lastChunk: ContinuousClock.Instant
    }
    private var transfers: [Key: Open] = [:]
    /// Transfers answered `deferred` whose sender has not restarted them yet: their later in-flight chunks are
    /// answered `deferred` too (not "unknown transfer, start again", which would resend at once).
    private var deferred: [Key: ContinuousClock.Instant] = [:]
    private var thread: ServiceThread?
    /// SPEC §6.5: a transfer with no chunk for 5 minutes may be discarded.
    static let idleLimit: Duration = .seconds(300)
    /// Free space kept beyond a transfer's size before it is started (for PostgreSQL's WAL when they share a disk,
    /// and for the metadata of the rename).
    static let reserveBytes: UInt64 = 16 << 20

    init(blobs: BlobStore, inbox: Inbox, status: SharedStatus, logger: Logger) {
        self.blobs = blobs
        self.inbox = inbox
        self.status = status
        self.logger = logger
    }

    func start() {
        thread = ServiceThread(name: "tessera-blobs") { [self] in
            while let work = queue.pop() {
                switch work {
                case .chunk(let peer, let c): receive(c, from: peer)
                case .drop(let peer):
                    for (k, t) in transfers where k.peer == peer {
                        blobs.abort(t.transfer)
                        transfers[k] = nil
                    }
                    for k in deferred.keys where k.peer == peer { deferred[k] = nil }
                case .dropOne(let peer, let id):
                    let k = Key(peer: peer, id: id)
                    if let t = transfers.removeValue(forKey: k) { blobs.abort(t.transfer) }
                    deferred[k] = nil
                case .sweep:
                    sweep(now: .now)
                }
            }
            for t in transfers.values { blobs.abort(t.transfer) }
            transfers.removeAll()
        }
    }

    func submit(_ work: Work) { queue.push(work) }

    func stop() {
        queue.close()
        thread?.join()
    }

    private func answer(_ peer: [UInt8], _ c: BlobChunk, offset: UInt64, status: AckStatus) {
        inbox.post(.event(.chunkAnswered(peer, ref: c.ref, transferID: c.transferID, offset: offset, status: status)))
    }

    /// Deletes the transfer's temp file and answers `deferred` at offset 0; publishes the storage problem.
    private func defer_(_ key: Key, _ c: BlobChunk, from peer: [UInt8], because why: String) {
        if let t = transfers.removeValue(forKey: key) { blobs.abort(t.transfer) }
        let first = deferred[key] == nil
        deferred[key] = .now
        if first {
            let wasFull = status.value.withLock { s -> Bool in
                let was = s.storage.fullSince != nil
                if !was { s.storage.fullSince = Date() }
                s.storage.error = why
                s.storage.transfersDeferred += 1
                return was
            }
            if !wasFull {
                logger.error("data dir out of space: blob transfers are deferred until space is freed",
                             metadata: ["dataDir": "\(blobs.root)", "error": "\(why)"])
            }
        }
        answer(peer, c, offset: 0, status: .deferred)
    }

    /// A blob was stored: the data dir has room again.
    private func spaceIsBack() {
        let since = status.value.withLock { s -> Date? in
            let since = s.storage.fullSince
            s.storage.fullSince = nil
            s.storage.error = nil
            return since
        }
        if let since {
            logger.notice("data dir has space again: deferred blob transfers resume",
                          metadata: ["fullFor": "\(Int(Date().timeIntervalSince(since))) s"])
        }
    }

    private func sweep(now: ContinuousClock.Instant) {
        for (k, t) in transfers where now - t.lastChunk > Self.idleLimit {
            logger.info("discarding an idle blob transfer", metadata: ["shard": "\(t.ref)", "received": "\(t.transfer.received)"])
            blobs.abort(t.transfer)
            transfers[k] = nil
        }
        for (k, at) in deferred where now - at > Self.idleLimit { deferred[k] = nil }
        status.value.withLock { $0.storage.transfersOpen = transfers.count }
    }

    private func receive(_ c: BlobChunk, from peer: [UInt8]) {
        let key = Key(peer: peer, id: c.transferID)
        if c.offset == 0, transfers[key] == nil || transfers[key]!.transfer.received > 0 {
            if let old = transfers.removeValue(forKey: key) { blobs.abort(old.transfer) }
            guard c.totalSize <= Self.maxTransferBytes(c.kind) else { return answer(peer, c, offset: 0, status: .refused) }
            // Not started when it cannot fit: better to wait now than to write most of it and fail at the end.
            if let free = blobs.freeBytes(), free < c.totalSize + Self.reserveBytes {
                return defer_(key, c, from: peer, because: "\(free) bytes free, the blob needs \(c.totalSize) + \(Self.reserveBytes) reserve")
            }
            do {
                transfers[key] = Open(
                    transfer: try blobs.beginTransfer(totalSize: c.totalSize), ref: c.ref, kind: c.kind, step: c.step,
                    lastChunk: .now)
                deferred[key] = nil
            } catch let e as BlobStoreError where e.isOutOfSpace {
                return defer_(key, c, from: peer, because: e.message)
            } catch {
                logger.info("cannot start blob transfer", metadata: ["error": "\(error)"])
                return answer(peer, c, offset: 0, status: .refused)
            }
        }
        // In-flight chunks of a transfer just deferred: deferred too, until the sender starts it again.
        if transfers[key] == nil, deferred[key] != nil { return answer(peer, c, offset: 0, status: .deferred) }
        // A chunk of a transfer we do not have (the coordinator restarted): ask for it from the start.
        guard let t = transfers[key] else { return answer(peer, c, offset: 0, status: .accepted) }
        transfers[key]!.lastChunk = .now
        do {
            try t.transfer.append(offset: c.offset, data: c.data)
        } catch let e as BlobStoreError where e.isOutOfSpace {
            return defer_(key, c, from: peer, because: e.message)
        } catch {
            transfers[key] = nil
            blobs.abort(t.transfer)
            logger.info("blob transfer rejected", metadata: ["error": "\(error)"])
            return answer(peer, c, offset: 0, status: .refused)
        }
        guard c.isLast else { return answer(peer, c, offset: t.transfer.received, status: .accepted) }
        transfers[key] = nil
        do {
            let path = try blobs.finish(t.transfer, expectedSHA256: c.sha256)
            status.value.withLock { $0.blobBytesStored += Int(t.transfer.totalSize) }
            spaceIsBack()
            inbox.post(.event(.blobStored(
                peer, ref: t.ref, transferID: c.transferID, kind: t.kind, step: t.step, sha256: c.sha256,
                size: Int64(t.transfer.totalSize), path: path)))
        } catch let e as BlobStoreError where e.isOutOfSpace {
            defer_(key, c, from: peer, because: e.message)  // finish already deleted the temp file
        } catch {
            logger.info("blob transfer rejected", metadata: ["error": "\(error)"])
            answer(peer, c, offset: t.transfer.received, status: .refused)
        }
    }
}
