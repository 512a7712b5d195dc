import Foundation
import Testing
import TesseraProtocol

/// The expected value of every golden frame set in protocol/fixtures (written by generate.py, an independent
/// Python encoder). Each must decode to this value and re-encode to the same bytes.
private let ref = ShardRef(jobID: 42, shardIndex: 3, attempt: 2)
private let blob: [UInt8] = Array(0..<20)
private let blobSHA = "e7aebf577f60412f0312d442c70a1fa6148c090bf5bab404caec29482ae779e8"  // sha256(bytes 0..<20)
private let checkpointSHA = "47320987f9a49d5b00119b960f247a956773f57543982b8bfcb6da5bb3afd9ef"  // sha256("checkpoint")
/// The stored spec as the coordinator dispatches it: PostgreSQL's jsonb text (SPEC.md §11.2).
private let specJSON =
    #"{"kind": "sampling", "name": "ddim-ring", "seed": 7, "params": {"target": {"stds": [0.2, 0.2, 0.2, 0.2], "#
    + #""means": [[2, 0], [0, 2], [-2, 0], [0, -2]]}, "samples": 25000, "sampling_steps": 50}, "shards": 4, "#
    + #""priority": 0, "algorithm": "ddim", "max_attempts": 3}"#
/// This build's capabilities (SPEC.md §11.1).
private let capabilities = [
    "sampling/ddpm", "sampling/ddim", "sampling/ddpm-train", "sampling/langevin", "sampling/smc", "rl/rloo",
    "preference/dpo", "sampling/noop", "rl/noop", "preference/noop",
]

private let valid: [(String, Message)] = [
    ("ready", .ready(Ready(protocolVersion: 1, workerName: "worker-a", host: "node-01", slots: 2,
        capabilities: capabilities, running: []))),
    ("ready_reconnect", .ready(Ready(protocolVersion: 1, workerName: "wörker-π", host: "", slots: 1,
        capabilities: ["rl/rloo", "preference/dpo"], running: [ref]))),
    ("heartbeat_worker", .heartbeat(Heartbeat(credits: 1, progress: [ShardProgress(ref: ref, step: 500, total: 1000)]))),
    ("heartbeat_coordinator", .heartbeat(Heartbeat(credits: 0, progress: []))),
    ("disconnect", .disconnect(Disconnect(reason: "shutdown"))),
    ("dispatch", .dispatch(Dispatch(ref: ShardRef(jobID: 42, shardIndex: 0, attempt: 1), kind: "sampling",
        algorithm: "ddim", seed: 7, spec: Array(specJSON.utf8), slice: Array(#"{"end": 8192, "start": 0}"#.utf8),
        resume: nil, totalSteps: 50))),
    ("dispatch_resume", .dispatch(Dispatch(ref: ShardRef(jobID: .max, shardIndex: .max, attempt: -1), kind: "rl",
        algorithm: "rloo", seed: .max, spec: Array("{}".utf8),
        slice: Array(#"{"beta": 0.05, "seed": "18446744073709551615", "point": 2147483647}"#.utf8),
        resume: CheckpointInfo(step: 25, sha256: checkpointSHA, size: 1234), totalSteps: .min))),
    ("dispatch_depends_on", .dispatch(Dispatch(ref: ShardRef(jobID: 42, shardIndex: 3, attempt: 1), kind: "rl",
        algorithm: "noop", seed: 1, spec: Array("{}".utf8), slice: Array(#"{"index": 3, "depends_on": [0, 1]}"#.utf8),
        resume: nil, totalSteps: 1))),
    ("cancel", .cancel(Cancel(ref: ref, reason: "job cancelled"))),
    ("metrics", .metrics(MetricsBatch(ref: ref, sequence: 7, points: [
        MetricPoint(name: "loss", step: 10, value: 1.5),
        MetricPoint(name: "loss", step: 11, value: Double(bitPattern: 0x7FF8_0000_0000_0001)),
        MetricPoint(name: "grad_norm", step: 11, value: .infinity),
        MetricPoint(name: "lr", step: -1, value: -0.0),
    ]))),
    ("logs", .logs(LogBatch(ref: ref, sequence: 3, lines: [
        LogLine(time: 1765507840.0, level: .info, message: "leased: attempt 2, resuming from the checkpoint at step 25"),
        LogLine(time: 1765507840.5, level: .notice, message: "phase: fine-tune β = 0.1"),
    ]))),
    ("chunk_first", .chunk(BlobChunk(ref: ref, transferID: 5, kind: .checkpoint, step: 25, offset: 0, totalSize: 20,
        isLast: false, sha256: "", data: Array(blob[0..<16])))),
    ("chunk_last", .chunk(BlobChunk(ref: ref, transferID: 5, kind: .checkpoint, step: 25, offset: 16, totalSize: 20,
        isLast: true, sha256: blobSHA, data: Array(blob[16...])))),
    ("chunk_empty_samples", .chunk(BlobChunk(ref: ref, transferID: 6, kind: .samples, step: 0, offset: 0, totalSize: 0,
        isLast: true, sha256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", data: []))),
    ("shard_done", .shardDone(ShardDone(ref: ref, summary: Array(#"{"n":25000,"sum":[1.0,2.0]}"#.utf8),
        resultSHA256: blobSHA))),
    ("shard_done_no_result", .shardDone(ShardDone(ref: ref, summary: Array("{}".utf8), resultSHA256: ""))),
    ("shard_failed", .shardFailed(ShardFailed(ref: ref, reason: "sampler diverged at step 812", failure: .shardError))),
    ("shard_failed_retryable", .shardFailed(ShardFailed(ref: ref, reason: "worker draining", failure: .infrastructure))),
    ("shard_failed_permanent", .shardFailed(ShardFailed(ref: ref, reason: "spec.params.eta: must be >= 0", failure: .permanent))),
    ("ack_metrics", .ack(Ack(ref: ref, kind: .metrics, sequence: 7, offset: 0, accepted: true))),
    ("ack_logs", .ack(Ack(ref: ref, kind: .logs, sequence: 3, offset: 0, accepted: true))),
    ("ack_chunk", .ack(Ack(ref: ref, kind: .chunk, sequence: 5, offset: 16, accepted: true))),
    ("ack_fenced", .ack(Ack(ref: ShardRef(jobID: 42, shardIndex: 3, attempt: 1), kind: .done, sequence: 0, offset: 0,
        status: .refused))),
    ("ack_chunk_deferred", .ack(Ack(ref: ref, kind: .chunk, sequence: 5, offset: 0, status: .deferred))),
    ("fetch", .fetch(Fetch(requestID: 1, sha256: checkpointSHA, offset: 0, length: 1 << 20))),
    ("fetch_reply", .fetchReply(FetchReply(requestID: 1, sha256: blobSHA, offset: 0, totalSize: 20, data: blob,
        error: ""))),
    ("fetch_reply_error", .fetchReply(FetchReply(requestID: 2, sha256: checkpointSHA, offset: 0, totalSize: 0, data: [],
        error: "not found"))),
    ("request", .request(ClientRequest(requestID: 17, method: "status", body: Array(#"{"job":42}"#.utf8)))),
    ("request_shard_inputs", .request(ClientRequest(requestID: 5, method: "shard.inputs", body: Array(#"{"job":42,"shard":3}"#.utf8)))),
    ("reply_shard_inputs", .reply(ClientReply(requestID: 5, status: 0, body: Array(
        (#"{"inputs":[{"shard":0,"summary":{"index":0,"value":1},"result_sha256":""},"#
            + #"{"shard":1,"summary":{"index":1,"value":1},"result_sha256":""# + blobSHA + #""}]}"#).utf8), blob: []))),
    ("reply", .reply(ClientReply(requestID: 17, status: 0, body: Array(#"{"state":"succeeded"}"#.utf8),
        blob: [0xDE, 0xAD, 0xBE, 0xEF]))),
    ("reply_error", .reply(ClientReply(requestID: 18, status: WireStatus.notFound,
        body: Array(#"{"error":"job 99 not found"}"#.utf8), blob: []))),
    ("error", .error(ErrorMessage(code: ProtocolError.Code.unknownType.wireCode, message: "unknown message type 0x55"))),
]

private let invalid: [(String, ProtocolError.Code)] = [
    ("no_frames", .badFrameCount),
    ("bad_magic", .badMagic),
    ("truncated_header", .truncated),
    ("long_header", .trailingBytes),
    ("unsupported_version", .unsupportedVersion),
    ("unknown_type", .unknownType),
    ("nonzero_flags", .malformed),
    ("missing_body", .badFrameCount),
    ("extra_frame", .badFrameCount),
    ("chunk_without_blob", .badFrameCount),
    ("truncated_body", .truncated),
    ("trailing_bytes", .trailingBytes),
    ("bad_bool", .malformed),
    ("bad_ack_status", .malformed),
    ("bad_failure", .malformed),
    ("bad_ack_kind", .malformed),
    ("bad_log_level", .malformed),
    ("oversize_string", .oversize),
    ("oversize_array", .oversize),
    ("bad_utf8", .badUTF8),
    ("bad_sha256", .malformed),
    ("chunk_past_total", .malformed),
]

@Suite struct FixtureTests {
    @Test func everyFixtureFileIsCovered() throws {
        #expect(try Fixtures.names() == Set(valid.map(\.0)))
        #expect(try Fixtures.names(in: "invalid") == Set(invalid.map(\.0)))
    }

    @Test func everyMessageTypeHasAFixture() {
        #expect(Set(valid.map(\.1.type)) == Set(MessageType.allCases))
    }

    @Test(arguments: valid.map(\.0))
    func decodesAndReencodes(name: String) throws {
        let expected = try #require(valid.first { $0.0 == name }?.1)
        let frames = try Fixtures.load("\(name).frames")
        let decoded = try WireCodec.decode(frames)
        #expect(decoded == expected)
        #expect(WireCodec.encode(expected) == frames)
        #expect(WireCodec.encode(decoded) == frames)
    }

    @Test(arguments: invalid.map(\.0))
    func invalidFixtureGivesTypedError(name: String) throws {
        let expected = try #require(invalid.first { $0.0 == name }?.1)
        let frames = try Fixtures.load("invalid/\(name).frames")
        do {
            let message = try WireCodec.decode(frames)
            Issue.record("\(name) decoded to \(message)")
        } catch {
            #expect(error.code == expected, "\(error)")
        }
    }

    @Test func nanPayloadSurvivesBitExactly() throws {
        let decoded = try WireCodec.decode(try Fixtures.load("metrics.frames"))
        guard case .metrics(let batch) = decoded else {
            Issue.record("not a metrics batch")
            return
        }
        #expect(batch.points.map(\.value.bitPattern) == [
            0x3FF8_0000_0000_0000, 0x7FF8_0000_0000_0001, 0x7FF0_0000_0000_0000, 0x8000_0000_0000_0000,
        ])
    }
}
