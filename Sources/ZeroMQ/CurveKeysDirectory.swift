// Tessera's `--keys-dir` layouts (docs/operations.md, "Keys"):
//
//   coordinator:  DIR/coordinator.key_secret   its key pair (and DIR/coordinator.key, the public half to hand out)
//                 DIR/authorized/*.key         one public certificate per worker and per user allowed in
//   worker, CLI:  DIR/client.key_secret        its own key pair (DIR/client.key: the public half to authorize)
//                 DIR/coordinator.key          the coordinator's public certificate
//
// Secret certificates must not be readable by group or others (as ssh insists for its private keys).

import Foundation

public struct CurveKeysError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// What a coordinator loads from its keys directory.
public struct CoordinatorKeys: Sendable {
    public var keyPair: ZMQCurveKeyPair
    public var authorizedDirectory: String
}

/// What a worker or CLI loads from its keys directory.
public struct ClientKeys: Sendable {
    public var keyPair: ZMQCurveKeyPair
    public var coordinatorPublicKey: String
}

/// The allow-list: public key (Z85) → the certificate file that granted it (its name is the peer's label).
public struct AuthorizedKeys: Sendable, Equatable {
    public var keys: [String: String]
    /// Files that could not be read as public certificates (skipped, reported).
    public var problems: [String]

    public init(keys: [String: String] = [:], problems: [String] = []) {
        self.keys = keys
        self.problems = problems
    }

    public func contains(_ publicKey: String) -> Bool { keys[publicKey] != nil }
}

public enum CurveKeysDirectory {
    public static let coordinatorSecret = "coordinator.key_secret"
    public static let coordinatorPublic = "coordinator.key"
    public static let clientSecret = "client.key_secret"
    public static let clientPublic = "client.key"
    public static let authorized = "authorized"

    public static func coordinator(_ dir: String) throws -> CoordinatorKeys {
        let pair = try secretCertificate(
            (dir as NSString).appendingPathComponent(coordinatorSecret),
            hint: "create the coordinator's keys with `tessera keygen coordinator --keys-dir \(dir)`")
        let authorizedDir = (dir as NSString).appendingPathComponent(authorized)
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: authorizedDir, isDirectory: &isDir), isDir.boolValue else {
            throw CurveKeysError(
                "\(authorizedDir) is missing: it holds the public keys allowed in (`tessera keygen coordinator` creates it)")
        }
        return CoordinatorKeys(keyPair: pair, authorizedDirectory: authorizedDir)
    }

    public static func client(_ dir: String) throws -> ClientKeys { try client(dir, requireCoordinatorKey: true) }

    /// A client's keys; without `requireCoordinatorKey` a missing coordinator.key leaves `coordinatorPublicKey` empty.
    public static func client(_ dir: String, requireCoordinatorKey: Bool) throws -> ClientKeys {
        let secretPath = (dir as NSString).appendingPathComponent(clientSecret)
        if !FileManager.default.fileExists(atPath: secretPath),
            FileManager.default.fileExists(atPath: (dir as NSString).appendingPathComponent(coordinatorSecret))
        {
            throw CurveKeysError(
                "\(dir) is a coordinator's keys directory; a worker or client needs its own keys: "
                    + "`tessera keygen client NAME --keys-dir OTHER_DIR --authorize-in \(dir)`")
        }
        let pair = try secretCertificate(
            secretPath, hint: "create this machine's keys with `tessera keygen client NAME --keys-dir \(dir)`")
        let serverPath = (dir as NSString).appendingPathComponent(coordinatorPublic)
        if !requireCoordinatorKey, !FileManager.default.fileExists(atPath: serverPath) {
            return ClientKeys(keyPair: pair, coordinatorPublicKey: "")
        }
        let server = try certificate(
            serverPath, hint: "copy the coordinator's public certificate (its keys directory's coordinator.key) there")
        return ClientKeys(keyPair: pair, coordinatorPublicKey: server.publicKey)
    }

    /// Reads every `*.key` file of `dir` (the allow-list). Unreadable files are reported, not fatal: one bad file
    /// must not lock everybody out on a reload.
    public static func authorizedKeys(_ dir: String) throws -> AuthorizedKeys {
        let names: [String]
        do { names = try FileManager.default.contentsOfDirectory(atPath: dir) } catch {
            throw CurveKeysError("cannot read the allow-list directory \(dir): \(error.localizedDescription)")
        }
        var out = AuthorizedKeys()
        for name in names.sorted() where name.hasSuffix(".key") && !name.hasPrefix(".") {
            let path = (dir as NSString).appendingPathComponent(name)
            do {
                let cert = try certificate(path, hint: "")
                out.keys[cert.publicKey] = name
            } catch {
                out.problems.append("\(error)")
            }
        }
        return out
    }

    /// What changes when the allow-list changes: the directory's modification time (files added, removed, renamed)
    /// and each file's inode, size and modification time (a key overwritten in place, or a Kubernetes volume's
    /// symlink swap). Nil if the directory cannot be read.
    public static func modificationStamp(_ dir: String) -> [Int64]? {
        var st = stat()
        guard stat(dir, &st) == 0, let names = try? FileManager.default.contentsOfDirectory(atPath: dir) else { return nil }
        var stamp: [Int64] = [Int64(st.st_mtim.tv_sec), Int64(st.st_mtim.tv_nsec)]
        for name in names.sorted() where name.hasSuffix(".key") {
            var f = stat()
            guard stat((dir as NSString).appendingPathComponent(name), &f) == 0 else { continue }
            stamp += [Int64(f.st_ino), Int64(f.st_size), Int64(f.st_mtim.tv_sec), Int64(f.st_mtim.tv_nsec)]
        }
        return stamp
    }

    public static func certificate(_ path: String, hint: String) throws -> ZMQCertificate {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw CurveKeysError("cannot read \(path)" + (hint.isEmpty ? "" : ": \(hint)"))
        }
        do {
            return try ZMQCertificate.parse(String(decoding: data, as: UTF8.self))
        } catch {
            throw CurveKeysError("\(path): \(error)")
        }
    }

    static func secretCertificate(_ path: String, hint: String) throws -> ZMQCurveKeyPair {
        var st = stat()
        guard stat(path, &st) == 0 else { throw CurveKeysError("\(path) not found: \(hint)") }
        // libpq's rule for its key files: owned by this user, no access for group or others; or owned by root with
        // at most group read (how Kubernetes mounts a Secret with fsGroup, and a root-managed /etc layout).
        let mode = st.st_mode & 0o777
        let tooOpen = st.st_uid == 0 && getuid() != 0 ? mode & 0o037 != 0 : mode & 0o077 != 0
        if tooOpen {
            throw CurveKeysError(
                "\(path) is readable by others (mode \(String(mode, radix: 8))): `chmod 600 \(path)`"
                    + (st.st_uid == 0 && getuid() != 0 ? " (or 640 if root owns it and only this user's group may read it)" : ""))
        }
        let cert = try certificate(path, hint: hint)
        guard let pair = cert.keyPair else { throw CurveKeysError("\(path) holds no secret-key: it is a public certificate") }
        return pair
    }
}
