// The worker spool (Spool.swift, SpoolRecord.swift): output kept in order through memory, an append-only file and
// back; the file emptied once read; the caps that make the loop stop taking output.

import Foundation
import Logging
import TesseraModel
@testable import TesseraWorker
import TesseraWorkerCore
import Testing

typealias Output = WorkerStateMachine.ComputeOutput

func output(_ first: Int, _ count: Int, blob: Int = 0, outcome: WorkerStateMachine.Outcome? = nil) -> Output {
    var o = Output(step: 0)
    o.points = (first..<first + count).map { MetricPoint(name: "m/\($0 % 3)", step: Int64($0), value: Double($0) * 0.5 - 3) }
    if blob > 0 {
        o.blobs = [WorkerStateMachine.Blob(kind: .checkpoint, step: Int64(first), bytes: (0..<blob).map { UInt8(($0 + first) % 251) }, sha256: "")]
        o.digests = [String(repeating: "c", count: 64)]
    }
    o.outcome = outcome
    return o
}

func tempDir() throws -> String {
    var template = Array("/tmp/tessera-spool-test-XXXXXX".utf8CString)
    guard let p = mkdtemp(&template) else { throw SpoolTestError() }
    return String(cString: p)
}

struct SpoolTestError: Error {}

@Suite("Worker spool")
struct SpoolTests {
    @Test("A record round-trips every field bit for bit, and a damaged record is refused", arguments: [
        output(0, 0),
        output(5, 1000, blob: 70_000),
        output(1, 3, outcome: .done(summary: Array("{\"a\":1}".utf8))),
        output(9, 2, outcome: .failed(reason: "nan loss ✗", failure: .permanent)),
    ])
    func recordRoundTrip(o: Output) throws {
        var special = o
        special.points += [
            MetricPoint(name: "nan", step: -1, value: .nan), MetricPoint(name: "", step: .max, value: -0.0),
            MetricPoint(name: "inf", step: .min, value: -.infinity),
        ]
        let bytes = SpoolRecord.encode(special)
        let back = try SpoolRecord.decode(bytes)
        #expect(back.points.map(\.value.bitPattern) == special.points.map(\.value.bitPattern))
        #expect(back.points.map(\.name) == special.points.map(\.name) && back.points.map(\.step) == special.points.map(\.step))
        #expect(back.blobs == special.blobs && back.digests == special.digests && back.outcome == special.outcome)
        #expect(throws: SpoolRecord.Malformed.self) { try SpoolRecord.decode(Array(bytes.dropLast())) }
        #expect(throws: SpoolRecord.Malformed.self) { try SpoolRecord.decode(bytes + [0]) }
    }

    @Test("Past the memory cap output goes to the file and comes back in order; the file is emptied once read")
    func orderThroughTheFile() throws {
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = "\(dir)/s.spool"
        // Room in memory for about two outputs of 100 points.
        let spool = Spool(path: path, limits: .init(memoryBytes: 10_000, diskBytes: 1 << 30), logger: Logger(label: "test"))
        let sent = (0..<20).map { output($0 * 100, 100, blob: $0 % 4 == 0 ? 5000 : 0) }
        for o in sent { spool.append(o) }
        #expect(spool.bytesSpooled > 0)
        #expect(FileManager.default.fileExists(atPath: path))
        // Half back, then more in: order holds across memory, file and the new output.
        var back: [Output] = []
        for _ in 0..<10 { back.append(spool.next()!) }
        let more = (20..<25).map { output($0 * 100, 100) }
        for o in more { spool.append(o) }
        while let o = spool.next() { back.append(o) }
        #expect(back == sent + more)
        #expect(spool.isEmpty)
        // Read to its end: truncated, so it never holds more than was unread at one time.
        let size = (try FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? -1
        #expect(size == 0)
        spool.close()
        #expect(!FileManager.default.fileExists(atPath: path))
    }

    @Test("At the disk cap the spool stops taking output until it has been read back")
    func diskCap() throws {
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let spool = Spool(path: "\(dir)/s.spool", limits: .init(memoryBytes: 1, diskBytes: 20_000), logger: Logger(label: "test"))
        var n = 0
        while spool.acceptsMore {
            spool.append(output(n * 100, 100))
            n += 1
            #expect(n < 100)
        }
        // 100 points of 21 bytes (a 3-byte name, step, value) plus the record's 17 bytes of counts and length:
        // 2,117 bytes each; the 10th passes 20,000.
        #expect(n == 10)
        var back = 0
        while spool.next() != nil { back += 1 }
        #expect(back == n && spool.acceptsMore)
    }

    @Test("A file that cannot be written (no space) keeps the output in memory, after the file's, and stops taking more")
    func writeFailure() throws {
        guard FileManager.default.fileExists(atPath: "/dev/full") else { return }
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // /dev/full: every write fails with ENOSPC. A symlink makes it the spool's file.
        let path = "\(dir)/s.spool"
        try FileManager.default.createSymbolicLink(atPath: path, withDestinationPath: "/dev/full")
        let spool = Spool(path: path, limits: .init(memoryBytes: 2000, diskBytes: 1 << 30), logger: Logger(label: "test"))
        let sent = (0..<4).map { output($0 * 20, 20) }
        for o in sent { spool.append(o) }
        #expect(!spool.acceptsMore)
        var back: [Output] = []
        while let o = spool.next() { back.append(o) }
        #expect(back == sent)
        #expect(spool.acceptsMore)
    }
}
