// The blob service: CHUNK transfers written to temp files, hashed, fsynced and renamed into the content-addressed
// store on a thread of its own, so a 256 MiB checkpoint's fsync never delays a heartbeat (protocol/SPEC.md §6.5).
// The state machine has already fenced each chunk (attempt and sender); the last chunk's registration in
// PostgreSQL goes through the writer, and only its commit sends the final ACK.

import Foundation
import TesseraCore
import Logging
import TesseraCoordinatorCore
import TesseraModel
import TesseraProtocol

final class BlobWriter: @unchecked Sendable {
    // @unchecked: `transfers` is touched only by the blob thread.
    enum Work: Sendable {
        case chunk([UInt8], BlobChunk)
        case drop([UInt8])
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
    private let logger: Logger
    private var transfers: [Key: (transfer: BlobStore.Transfer, ref: ShardRef, kind: BlobKind, step: Int64)] = [:]
    private var thread: ServiceThread?

    init(blobs: BlobStore, inbox: Inbox, logger: Logger) {
        self.blobs = blobs
        self.inbox = inbox
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

    private func answer(_ peer: [UInt8], _ c: BlobChunk, offset: UInt64, accepted: Bool) {
        inbox.post(.event(.chunkAnswered(peer, ref: c.ref, transferID: c.transferID, offset: offset, accepted: accepted)))
    }

    private func receive(_ c: BlobChunk, from peer: [UInt8]) {
        let key = Key(peer: peer, id: c.transferID)
        if c.offset == 0, transfers[key] == nil || transfers[key]!.transfer.received > 0 {
            if let old = transfers.removeValue(forKey: key) { blobs.abort(old.transfer) }
            guard c.totalSize <= Self.maxTransferBytes(c.kind) else { return answer(peer, c, offset: 0, accepted: false) }
            do {
                transfers[key] = (try blobs.beginTransfer(totalSize: c.totalSize), c.ref, c.kind, c.step)
            } catch {
                logger.info("cannot start blob transfer", metadata: ["error": "\(error)"])
                return answer(peer, c, offset: 0, accepted: false)
            }
        }
        // A chunk of a transfer we do not have (the coordinator restarted): ask for it from the start.
        guard let t = transfers[key] else { return answer(peer, c, offset: 0, accepted: true) }
        do {
            try t.transfer.append(offset: c.offset, data: c.data)
        } catch {
            transfers[key] = nil
            blobs.abort(t.transfer)
            logger.info("blob transfer rejected", metadata: ["error": "\(error)"])
            return answer(peer, c, offset: 0, accepted: false)
        }
        guard c.isLast else { return answer(peer, c, offset: t.transfer.received, accepted: true) }
        transfers[key] = nil
        do {
            let path = try blobs.finish(t.transfer, expectedSHA256: c.sha256)
            inbox.post(.event(.blobStored(
                peer, ref: t.ref, transferID: c.transferID, kind: t.kind, step: t.step, sha256: c.sha256,
                size: Int64(t.transfer.totalSize), path: path)))
        } catch {
            logger.info("blob transfer rejected", metadata: ["error": "\(error)"])
            answer(peer, c, offset: t.transfer.received, accepted: false)
        }
    }
}
