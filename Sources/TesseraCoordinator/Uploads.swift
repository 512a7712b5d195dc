// Files clients upload into the content-addressed store (`blob.upload`, protocol/SPEC.md §7): the files a job brings
// (`files:` in its spec, TesseraCore/JobFiles.swift), sent by `tessera submit` before the spec itself.
//
// An upload names the whole blob (sha256, size) and sends it in order, one range per request. The bytes go to a temp
// file, hashed as they arrive; the range that completes the blob is verified, fsynced and renamed into the store
// (BlobStore.finish), so a blob path holds the whole verified file or nothing. Uploads are idempotent and resumable:
// a blob already stored answers at once, a range already received is ignored, and a range past what has arrived is
// answered with how much has, so a client (or a second one with the same file) continues from there. An upload that
// receives nothing for `idleLimit` is dropped. Nothing in the database refers to an uploaded blob until a job's spec
// names it at submit.

import Foundation
import Synchronization

final class Uploads: Sendable {
    /// Longest range one request may carry (decoded bytes; the base64 text is a third larger).
    static let maxRange = 4 << 20
    /// An upload with no new range for this long is dropped (its temp file removed).
    static let idleLimit: Duration = .seconds(600)

    private let blobs: BlobStore
    private struct Entry {
        var transfer: BlobStore.Transfer
        var lastRange: ContinuousClock.Instant
    }
    private let state = Mutex<(entries: [String: Entry], next: UInt64)>(([:], 0))

    init(blobs: BlobStore) { self.blobs = blobs }

    enum Outcome: Equatable {
        /// `received` bytes have arrived; `stored` once the whole blob is verified and in the store.
        case progress(received: UInt64, stored: Bool)
        /// The client's request is wrong (the message says how); what it sent so far is dropped.
        case refused(String)
        /// The store cannot take it now (out of space, an I/O error): try again later.
        case unavailable(String)
    }

    /// Takes the range [offset, offset + data.count) of blob `sha256` of `size` bytes.
    func receive(sha256: String, size: UInt64, offset: UInt64, data: [UInt8]) -> Outcome {
        if let stored = blobs.size(sha256: sha256) {
            // Content-addressed: a stored blob of another size would mean two contents with one sha256.
            guard stored == size else { return .refused("blob \(sha256) is stored with \(stored) bytes, not \(size)") }
            return .progress(received: size, stored: true)
        }
        return state.withLock { s -> Outcome in
            let now = ContinuousClock.now
            for (sha, e) in s.entries where now - e.lastRange > Self.idleLimit {
                e.transfer.abort()
                s.entries[sha] = nil
            }
            var entry: Entry
            if let e = s.entries[sha256] {
                guard e.transfer.totalSize == size else {
                    return .refused("blob \(sha256) is being uploaded with \(e.transfer.totalSize) bytes, not \(size)")
                }
                entry = e
            } else {
                // Only a range at 0 starts an upload; anything else learns that nothing has arrived.
                guard offset == 0 else { return .progress(received: 0, stored: false) }
                s.next += 1
                do {
                    entry = Entry(
                        transfer: try BlobStore.Transfer(
                            tmpPath: "\(blobs.root)/tmp/upload-\(getpid())-\(s.next).part", totalSize: size),
                        lastRange: now)
                } catch let e as BlobStoreError {
                    return .unavailable(e.message)
                } catch {
                    return .unavailable("\(error)")
                }
            }
            let t = entry.transfer
            // A gap: say how much has arrived, so the client resends from there.
            guard offset <= t.received else { return .progress(received: t.received, stored: false) }
            do {
                try t.append(offset: offset, data: data)
            } catch let e as BlobStoreError {
                t.abort()
                s.entries[sha256] = nil
                return e.errno != nil ? .unavailable(e.message) : .refused(e.message)
            } catch {
                t.abort()
                s.entries[sha256] = nil
                return .unavailable("\(error)")
            }
            entry.lastRange = now
            guard t.received == size else {
                s.entries[sha256] = entry
                return .progress(received: t.received, stored: false)
            }
            s.entries[sha256] = nil
            do {
                _ = try blobs.finish(t, expectedSHA256: sha256)
            } catch let e as BlobStoreError {
                // finish removed the temp file; a sha256 mismatch is the client's, anything else the store's.
                return e.errno != nil ? .unavailable(e.message) : .refused(e.message)
            } catch {
                return .unavailable("\(error)")
            }
            return .progress(received: size, stored: true)
        }
    }
}
