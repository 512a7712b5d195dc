// The coordinator (ARCHITECTURE.md §Processes), as services around a pure state machine (CORE.md):
//
//   transport thread  owns the ROUTER; polls it and a wake-up pipe (no fixed-interval polling), decodes, feeds the
//                     state machine (TesseraCoordinatorCore), encodes and sends what it answers
//   writer thread     one PostgreSQL connection, one transaction per batch of store commands (StoreWriter.swift)
//   read pool         client requests and FETCH on their own connections (ClientRequests.swift)
//   blob thread       CHUNK transfers: temp file, sha256, fsync, rename (BlobWriter.swift)
//   merge thread      merges of finished jobs on their own connection (Merger.swift)
//
// Nothing runs on Swift's cooperative pool; the threads talk through queues and the transport's inbox. `run()` makes
// the whole a swift-service-lifecycle `Service`: graceful shutdown stops taking work, finishes the batch being
// committed, says DISCONNECT to every worker (they keep their shards and re-register with the next coordinator).

import Foundation
import LibPQ
import Logging
import Metrics
import ServiceLifecycle
import Synchronization
import TesseraCore
import TesseraCoordinatorCore
import TesseraProtocol
import TesseraStore
import ZeroMQ

public struct CoordinatorConfiguration: Sendable {
    /// ZeroMQ endpoint to bind, e.g. `tcp://127.0.0.1:5555` (`tcp://127.0.0.1:*` picks a free port).
    public var bind: String
    /// libpq conninfo or postgres:// URL.
    public var databaseURL: String
    /// Where the checkpoint store lives.
    public var dataDir: String
    /// Heartbeat period in seconds, both directions (Paranoid Pirate).
    public var heartbeatInterval: Double = 1.0
    /// Heartbeats a worker may miss before it is declared lost and its shards go back to the queue.
    public var liveness: Int = 3
    /// A lease not renewed for this long is rescued even if no worker session noticed (coordinator restarts).
    public var leaseSeconds: Double = 15
    /// Largest blob slice sent in one reply.
    public var maxReadChunk: Int = 1 << 20
    /// Threads (each with its own PostgreSQL connection) answering client requests and FETCH.
    public var readers: Int = 2
    /// If set, the bound endpoint is written here once the coordinator listens (for scripts binding `:*`).
    public var endpointFile: String?
    /// CURVE keys (`coordinator.key_secret`, `authorized/`): when set, every peer must authenticate with a key on
    /// the allow-list (docs/operations.md, "Keys"); when nil, peers are not authenticated (loopback only, checked
    /// by the CLI).
    public var keysDir: String?

    public init(bind: String, databaseURL: String, dataDir: String) {
        self.bind = bind
        self.databaseURL = databaseURL
        self.dataDir = dataDir
    }
}

public final class Coordinator: Service, @unchecked Sendable {
    // @unchecked: the transport state below is touched only by the thread in `runBlocking()`; `stopRequested` and
    // the endpoint are the cross-thread parts (an atomic and a Mutex).

    /// The migration (migrations/NNNN_*) this build's SQL is written for.
    public static let schemaVersion = 7

    let config: CoordinatorConfiguration
    let catalogue: AlgorithmCatalogue
    let logger: Logger
    private let stopRequested = Atomic<Bool>(false)
    private let reloadRequested = Atomic<Bool>(false)
    private let endpointBox = Mutex<String?>(nil)
    private let status = SharedStatus()
    private var wake: Wakeup?
    /// The read pool while this coordinator is the active one (nil as a standby and after it stopped): the HTTP
    /// service's requests go there.
    private let activeReaders = Mutex<ReadPool?>(nil)

    // Transport-thread state.
    private var router: ZMQSocket!
    private var machine: CoordinatorStateMachine
    private var writer: StoreWriter!
    private var blobWriter: BlobWriter!
    private var merger: Merger!
    private var readers: ReadPool!
    private var repliesTooLarge = 0
    private lazy var shardDuration = Metrics.Timer(label: "tessera_shard_duration_seconds")

    public init(config: CoordinatorConfiguration, catalogue: AlgorithmCatalogue, logger: Logger) {
        self.config = config
        self.catalogue = catalogue
        self.logger = logger
        var c = CoordinatorStateMachine.Configuration()
        c.heartbeatInterval = .milliseconds(Int64(config.heartbeatInterval * 1000))
        c.liveness = config.liveness
        machine = CoordinatorStateMachine(configuration: c)
    }

    /// The endpoint actually bound (after start-up), e.g. with the port chosen for `:*`.
    public var boundEndpoint: String? { endpointBox.withLock { $0 } }

    /// Whether this coordinator serves (it holds the database lock); false while it waits as a standby.
    public var isActive: Bool { activeReaders.withLock { $0 != nil } }

    /// What the transport last published: counters, connected workers, authentication and storage state.
    public var statusSnapshot: CoordinatorStatus { status.value.withLock { $0 } }

    /// A client request (SPEC §7) from inside the process, answered by the read pool as a ZeroMQ client's would
    /// be. nil while this coordinator is not the active one (a standby, or stopped).
    public func request(_ method: String, body: JSONObject = [:]) async -> ClientReply? {
        guard let pool = activeReaders.withLock({ $0 }) else { return nil }
        let request = ClientRequest(requestID: 0, method: method, body: JSONValue.object(body).utf8Bytes)
        return await withCheckedContinuation { (done: CheckedContinuation<ClientReply, Never>) in
            pool.submit(request) { done.resume(returning: $0) }
        }
    }

    /// Asks the coordinator to stop: no new work is accepted, the batch being committed is finished, then it returns.
    public func requestStop() {
        stopRequested.store(true, ordering: .relaxed)
        wake?.signal()
    }

    /// Re-reads the allow-list (SIGHUP): added keys may connect, revoked keys' sessions end. The directory is also
    /// watched, so this only makes a change take effect at once.
    public func reloadKeys() {
        reloadRequested.store(true, ordering: .relaxed)
        wake?.signal()
    }

    /// The `Service` entry point: runs until graceful shutdown (SIGTERM/SIGINT in a `ServiceGroup`) or cancellation.
    public func run() async throws {
        try await withTaskCancellationOrGracefulShutdownHandler {
            try await withCheckedThrowingContinuation { (done: CheckedContinuation<Void, any Error>) in
                _ = ServiceThread(name: "tessera-transport") { [self] in
                    do {
                        try runBlocking()
                        done.resume()
                    } catch {
                        done.resume(throwing: error)
                    }
                }
            }
        } onCancelOrGracefulShutdown: { [self] in
            requestStop()
        }
    }

    private func openStore() throws -> PostgresJobStore {
        PostgresJobStore(db: try PGConnection(config.databaseURL), leaseSeconds: config.leaseSeconds)
    }

    // MARK: Transport thread

    /// Runs the coordinator on the calling thread until `requestStop()`.
    public func runBlocking() throws {
        // One active coordinator per database: a second one waits here as a standby until the lock is free.
        let lock = CoordinatorLock(databaseURL: config.databaseURL, logger: logger)
        guard lock.acquire(shouldStop: { stopRequested.load(ordering: .relaxed) }) else {
            logger.info("standby stopped before taking over")
            return
        }
        defer { lock.release() }
        let steppedDown = Mutex<String?>(nil)
        lock.watch { [self] reason in
            logger.error("stepping down", metadata: ["reason": "\(reason)"])
            steppedDown.withLock { $0 = reason }
            requestStop()
        }

        let first = try openStore()
        let version: Int
        do {
            version = try first.schemaVersion()
            guard version == Self.schemaVersion else {
                throw CoordinatorError(
                    version < Self.schemaVersion
                        ? "database schema is at version \(version), this build needs \(Self.schemaVersion): run `tessera migrate --database-url URL` first"
                        : "database schema is at version \(version), newer than this build (\(Self.schemaVersion)): upgrade tessera"
                )
            }
            // Workers recorded alive by a previous coordinator are unknown to this one until they say READY.
            try first.markAllWorkersLost(reason: "coordinator restarted")
        } catch {
            first.db.close()
            throw error
        }
        let blobs: BlobStore
        do { blobs = try BlobStore(dataDir: config.dataDir) } catch {
            first.db.close()
            throw error
        }

        let inbox = try Inbox()
        wake = inbox.wakeup
        let connect: @Sendable () throws -> PostgresJobStore = { [config] in
            PostgresJobStore(db: try PGConnection(config.databaseURL), leaseSeconds: config.leaseSeconds)
        }
        writer = StoreWriter(connect: connect, inbox: inbox, logger: logger)
        blobWriter = BlobWriter(blobs: blobs, inbox: inbox, status: status, logger: logger)
        merger = Merger(connect: connect, blobs: blobs, catalogue: catalogue, inbox: inbox, logger: logger)
        readers = ReadPool(
            connect: connect, blobs: blobs, catalogue: catalogue, inbox: inbox, status: status,
            maxReadChunk: config.maxReadChunk, logger: logger)
        writer.start(firstConnection: first)
        blobWriter.start()
        merger.start()
        readers.start(threads: max(1, config.readers))
        activeReaders.withLock { $0 = readers }
        defer {
            activeReaders.withLock { $0 = nil }
            readers.stop()
            merger.stop()
            blobWriter.stop()
            writer.stop()
        }

        let context = try ZMQContext(ioThreads: 1)
        defer { context.terminate() }
        // The ZAP handler is bound before the ROUTER and closed after it: libzmq lets a CURVE handshake through
        // unasked when no handler is bound.
        let keys = try config.keysDir.map(CurveKeysDirectory.coordinator)
        let auth = try keys.map { try Authenticator(context: context, keys: $0, logger: logger) }
        defer { auth?.close() }
        router = try ZMQSocket(context: context, type: .router)
        defer { router.close() }
        if let keys {
            try router.setCurveServer(secretKey: keys.keyPair.secretKey)
            try router.setZAPDomain("tessera")
            try auth?.watchHandshakes(of: router)
        }
        try router.setRouterMandatory(true)
        try router.setLinger(milliseconds: 2000)
        try router.setSendHighWaterMark(1_000_000)
        try router.setReceiveHighWaterMark(1_000_000)
        try router.setMaxMessageSize(Int64(WireCodec.limits.maxMessageBytes))
        try router.bind(config.bind)
        let endpoint = try router.lastEndpoint
        endpointBox.withLock { $0 = endpoint }
        if let file = config.endpointFile {
            let tmp = file + ".tmp"
            guard FileManager.default.createFile(atPath: tmp, contents: Data((endpoint + "\n").utf8)), rename(tmp, file) == 0 else {
                throw CoordinatorError("cannot write the endpoint file \(file)")
            }
        }
        logger.info(
            "coordinator listening",
            metadata: ["zmq.endpoint": "\(endpoint)", "auth": "\(auth == nil ? "none (loopback)" : "CURVE, allow-list")"])

        let interval = Duration.milliseconds(Int64(config.heartbeatInterval * 1000))
        var nextTick = ContinuousClock.now + interval
        var items = [ZMQPollItem(socket: router), ZMQPollItem(wakeup: inbox.wakeup)]
        if let auth {
            items.append(ZMQPollItem(socket: auth.zap.socket))
            if let m = auth.monitor { items.append(ZMQPollItem(socket: m.socket)) }
        }
        while !stopRequested.load(ordering: .relaxed) {
            let wait = max(0, (nextTick - ContinuousClock.now).wholeMilliseconds)
            let ready = try ZMQ.poll(items, timeoutMilliseconds: wait)
            if ready[1] { inbox.wakeup.reset() }
            if let auth {
                try auth.serveHandshakes()
                try auth.serveMonitor(now: .now)
                var n = 0
                while n < 10_000, let (frames, userID) = try router.receiveWithUserID(dontWait: true) {
                    n += 1
                    guard let identity = frames.first, auth.admit(identity: identity, userID: userID, now: .now) else {
                        // Only a revoked key's connection can get here (ZAP refuses unknown keys at the handshake).
                        if let identity = frames.first, !identity.isEmpty {
                            perform(machine.handle(.revoked(identity, reason: "key revoked"), now: .now))
                        }
                        continue
                    }
                    received(frames)
                }
            } else {
                var n = 0
                while n < 10_000, let frames = try router.receive(dontWait: true) {
                    n += 1
                    received(frames)
                }
            }
            drain(inbox)
            let force = reloadRequested.exchange(false, ordering: .relaxed)
            if ContinuousClock.now >= nextTick || force {
                if let auth {
                    let revoked = auth.reloadIfNeeded(force: force, now: .now, livePeers: Set(machine.peers))
                    for identity in revoked {
                        logger.notice("key revoked: ending the session", metadata: ["peer": "\(identity.hexPrefix)"])
                        perform(machine.handle(.revoked(identity, reason: "key revoked"), now: .now))
                    }
                }
            }
            if ContinuousClock.now >= nextTick {
                nextTick = ContinuousClock.now + interval
                perform(machine.handle(.tick, now: ContinuousClock.now))
                blobWriter.submit(.sweep)
            }
            for seconds in machine.takeShardSeconds() { shardDuration.recordSeconds(seconds) }
            status.value.withLock {
                $0.counters = machine.counters
                $0.connectedWorkers = machine.sessionCount
                $0.repliesTooLarge = repliesTooLarge
                $0.handshakesDenied = auth?.handshakesDenied ?? 0
                $0.handshakesFailed = auth?.handshakesFailed ?? 0
                $0.messagesRefused = auth?.messagesRefused ?? 0
                $0.authenticated = auth != nil
            }
        }

        // Graceful stop: the batch being committed is finished and acknowledged; what is queued behind it was never
        // acknowledged, so the workers still hold it and replay it to the next coordinator.
        let deadline = ContinuousClock.now + .seconds(10)
        while machine.isCommitting, ContinuousClock.now < deadline {
            _ = try ZMQ.poll([ZMQPollItem(wakeup: inbox.wakeup)], timeoutMilliseconds: 100)
            inbox.wakeup.reset()
            for item in inbox.take() {
                switch item {
                case .event(.committed(let outcomes)):
                    perform(machine.handle(.committed(outcomes), now: ContinuousClock.now).filter {
                        if case .commit = $0 { false } else { true }
                    })
                case .send(let peer, let m): send(peer, m)
                case .event: break
                }
            }
        }
        for peer in machine.peers { send(peer, .disconnect(Disconnect(reason: "coordinator shutting down"))) }
        if let reason = steppedDown.withLock({ $0 }) { throw CoordinatorError("stepped down: \(reason)") }
        logger.info("coordinator stopped")
    }

    private func received(_ frames: [[UInt8]]) {
        let now = ContinuousClock.now
        let split: (identity: [UInt8], frames: [[UInt8]])
        do {
            split = try WireCodec.splitRouterEnvelope(frames)
        } catch {
            // No empty delimiter after the identity: the peer is told (badEnvelope) if it has an identity at all.
            guard let identity = frames.first, !identity.isEmpty else { return }
            return perform(machine.handle(.malformed(identity, error, headerType: nil), now: now))
        }
        do {
            let message = try WireCodec.decode(split.frames)
            perform(machine.handle(.received(split.identity, message), now: now))
        } catch {
            logger.debug("malformed frame", metadata: ["error": "\(error)"])
            perform(machine.handle(
                .malformed(split.identity, error, headerType: WireCodec.typeCodeIfPresent(split.frames)), now: now))
        }
    }

    private func drain(_ inbox: Inbox) {
        for item in inbox.take() {
            switch item {
            case .event(let e): perform(machine.handle(e, now: ContinuousClock.now))
            case .send(let peer, let m): send(peer, m)
            }
        }
    }

    private func perform(_ actions: [CoordinatorStateMachine.Action]) {
        for action in actions {
            switch action {
            case .send(let peer, let m): send(peer, m)
            case .commit(let commands):
                for case .workerGone(let workerID, true, let reason) in commands {
                    logger.warning("worker lost: its leased shards go back to the queue", metadata: ["worker.id": "\(workerID)", "reason": "\(reason)"])
                }
                writer.submit(commands)
            case .merge(let jobID): merger.submit(jobID)
            case .writeChunk(let peer, let c): blobWriter.submit(.chunk(peer, c))
            case .dropTransfers(let peer): blobWriter.submit(.drop(peer))
            case .dropTransfer(let peer, let id): blobWriter.submit(.dropOne(peer, transferID: id))
            case .serve(let peer, let m): readers.submit(peer, m)
            }
        }
    }

    // MARK: Sending

    @discardableResult
    private func send(_ identity: [UInt8], _ message: Message) -> Bool {
        do {
            return try router.send(WireCodec.encodeForRouter(identity: identity, message), dontWait: true)
        } catch let e as ProtocolError where e.code == .oversize {
            // A reply too big for one message (e.g. `metrics` without a limit on a long run): the client is told to
            // narrow the request instead of getting a frame it must reject.
            guard case .reply(let r) = message, r.status != WireStatus.tooLarge else {
                logger.error("message over the protocol limits not sent", metadata: ["error": "\(e)"])
                return false
            }
            repliesTooLarge += 1
            let body: JSONObject = [
                "error": .string("the reply would exceed the protocol limits (\(e.message)); narrow the request (--limit, --shard, --name)")
            ]
            return send(identity, .reply(ClientReply(
                requestID: r.requestID, status: WireStatus.tooLarge, body: JSONValue.object(body).utf8Bytes)))
        } catch let e as ZMQError where e.isHostUnreachable {
            // The peer is gone; its session ends when its heartbeats stop.
            return false
        } catch {
            logger.error("send failed", metadata: ["error": "\(error)"])
            return false
        }
    }
}

public struct CoordinatorError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

extension [UInt8] {
    var hexPrefix: String { prefix(8).map { String(format: "%02x", $0) }.joined() }
}

extension Duration {
    var wholeMilliseconds: Int {
        let (s, a) = components
        return Int(s) * 1000 + Int(a / 1_000_000_000_000_000)
    }
}
