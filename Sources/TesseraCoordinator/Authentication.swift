// CURVE authentication on the coordinator's ROUTER (docs/operations.md, "Keys"; SPEC §9).
//
// The ZAP handler answers libzmq's handshake questions on the transport thread, from the allow-list of public keys
// in the keys directory's authorized/. It is bound before the ROUTER binds and closed after it, so no CURVE
// handshake is ever let through unasked. Each accepted connection carries its public key as the ZAP user id; every
// message is checked against the current allow-list, so a key removed from authorized/ (picked up on SIGHUP or
// within a second by watching the directory) ends its session and nothing more from it is accepted.

import Foundation
import Logging
import Synchronization
import TesseraCoordinatorCore
import ZeroMQ

final class Authenticator {
    let zap: ZAPHandler
    private let directory: String
    private let logger: Logger
    private(set) var allowed: AuthorizedKeys
    private var stamp: [Int64]?
    /// The public key each ROUTER identity authenticated with, and when it last spoke.
    private var peerKeys: [[UInt8]: (key: String, lastSeen: ContinuousClock.Instant)] = [:]
    /// Keys already logged as denied (bounded), so a peer retrying every second does not flood the log.
    private var loggedDenials: Set<String> = []

    private(set) var handshakesDenied = 0
    private(set) var messagesRefused = 0
    /// Handshakes that failed before the ZAP question (plaintext peers, wrong coordinator key), from the monitor.
    private(set) var handshakesFailed = 0
    private(set) var monitor: ZMQHandshakeMonitor?
    private var lastFailureLog: ContinuousClock.Instant?

    init(context: ZMQContext, keys: CoordinatorKeys, logger: Logger) throws {
        self.directory = keys.authorizedDirectory
        self.logger = logger
        allowed = try CurveKeysDirectory.authorizedKeys(keys.authorizedDirectory)
        stamp = CurveKeysDirectory.modificationStamp(keys.authorizedDirectory)
        zap = try ZAPHandler(context: context)
        report(allowed, reloaded: false)
    }

    func close() {
        monitor?.close()
        zap.close()
    }

    /// Watches the ROUTER's handshake failures (they never reach the ZAP handler).
    func watchHandshakes(of router: ZMQSocket) throws {
        monitor = try ZMQHandshakeMonitor(router, name: "tessera-handshakes")
    }

    /// Counts and logs (at most every 10 s) the handshake failures reported since the last call.
    func serveMonitor(now: ContinuousClock.Instant) throws {
        guard let failures = try monitor?.take(), !failures.isEmpty else { return }
        handshakesFailed += failures.count
        if lastFailureLog.map({ now - $0 >= .seconds(10) }) ?? true {
            lastFailureLog = now
            logger.warning(
                "CURVE handshake failed: a plaintext peer, or one holding another coordinator.key",
                metadata: ["kind": "\(failures[0].kind)", "endpoint": "\(failures[0].endpoint)", "total": "\(handshakesFailed)"])
        }
    }

    /// Answers pending ZAP requests.
    func serveHandshakes() throws {
        let answered = try zap.serve { [allowed] request in
            guard request.mechanism == "CURVE", let key = request.publicKey, allowed.contains(key) else { return nil }
            return key
        }
        for (request, ok) in answered where !ok {
            handshakesDenied += 1
            let key = request.publicKey ?? "(\(request.mechanism))"
            if loggedDenials.count < 1000, loggedDenials.insert(key).inserted {
                logger.warning(
                    "connection refused: key not on the allow-list",
                    metadata: ["peer.address": "\(request.address)", "peer.key": "\(key)"])
            }
        }
    }

    /// Whether a message from `identity`, whose connection authenticated as `userID`, may go on.
    func admit(identity: [UInt8], userID: String?, now: ContinuousClock.Instant) -> Bool {
        guard let key = userID, allowed.contains(key) else {
            messagesRefused += 1
            return false
        }
        peerKeys[identity] = (key, now)
        return true
    }

    /// Re-reads authorized/ when asked (SIGHUP) or when the directory changed; returns the identities whose key is
    /// no longer allowed.
    func reloadIfNeeded(force: Bool, now: ContinuousClock.Instant, livePeers: Set<[UInt8]>) -> [[UInt8]] {
        // Forget identities that are neither a session nor recently heard from (CLI connections come and go).
        peerKeys = peerKeys.filter { livePeers.contains($0.key) || now - $0.value.lastSeen < .seconds(60) }
        let current = CurveKeysDirectory.modificationStamp(directory)
        guard force || current != stamp else { return [] }
        stamp = current
        let fresh: AuthorizedKeys
        do {
            fresh = try CurveKeysDirectory.authorizedKeys(directory)
        } catch {
            logger.error("allow-list not reloaded; keeping the previous one", metadata: ["error": "\(error)"])
            return []
        }
        let changed = fresh != allowed
        allowed = fresh
        if changed || force { report(fresh, reloaded: true) }
        loggedDenials.removeAll()
        let revoked = peerKeys.filter { !fresh.contains($0.value.key) }.map(\.key)
        for identity in revoked { peerKeys[identity] = nil }
        return revoked
    }

    private func report(_ keys: AuthorizedKeys, reloaded: Bool) {
        for problem in keys.problems {
            logger.warning("allow-list file skipped", metadata: ["error": "\(problem)"])
        }
        logger.info(
            reloaded ? "allow-list reloaded" : "CURVE on; allow-list loaded",
            metadata: ["keys": "\(keys.keys.count)", "dir": "\(directory)"])
        if keys.keys.isEmpty {
            logger.warning("the allow-list is empty: no worker or client can connect until a key is added to \(directory)")
        }
    }
}
