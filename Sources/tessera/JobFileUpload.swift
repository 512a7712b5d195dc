// `tessera submit`'s side of the files a job brings (`files:`, TesseraCore/JobFiles.swift): read them relative to
// the spec file, and upload them to the coordinator's store (`blob.upload`, protocol/SPEC.md §7) before the spec.

import Foundation
import TesseraCore

enum JobFileUpload {
    /// Bytes per `blob.upload` request.
    static let range = 1 << 20

    /// Reads a file of the spec at `specFile` ("-": standard input, paths relative to the working directory).
    static func reader(specFile: String) -> (JobFile) throws -> [UInt8] {
        let base = specFile == "-" ? FileManager.default.currentDirectoryPath
            : (specFile as NSString).deletingLastPathComponent
        return { f in
            let path = f.path.hasPrefix("/") || base.isEmpty ? f.path : "\(base)/\(f.path)"
            let name = specFile == "-" ? "<stdin>" : specFile
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
                throw SpecError(file: name, line: nil, path: "files.\(f.name)", message: "files.\(f.name): there is no file \(path)")
            }
            guard !isDirectory.boolValue else {
                throw SpecError(file: name, line: nil, path: "files.\(f.name)", message: "files.\(f.name): \(path) is a directory")
            }
            if let size = (try? FileManager.default.attributesOfItem(atPath: path))?[.size] as? Int64, size > JobFile.maxBytes {
                throw SpecError(
                    file: name, line: nil, path: "files.\(f.name)",
                    message: "files.\(f.name): \(path) is \(size) bytes; a job file may be at most \(JobFile.maxBytes) bytes (64 MiB)")
            }
            guard let data = FileManager.default.contents(atPath: path) else {
                throw SpecError(file: name, line: nil, path: "files.\(f.name)", message: "files.\(f.name): cannot read \(path)")
            }
            return [UInt8](data)
        }
    }

    /// Uploads one file (resuming where the coordinator says it is; nothing is sent for a file it has already).
    static func upload(_ f: JobFile, bytes: [UInt8], over client: CoordinatorClient, quiet: Bool) throws {
        guard let sha = f.sha256 else { return }
        let size = bytes.count
        var offset = 0
        var data: ArraySlice<UInt8> = []  // the first request only asks how much the coordinator has
        var sent = 0
        var lastReport = Date()
        while true {
            let (reply, _) = try client.call(
                "blob.upload",
                [
                    "sha256": .string(sha), "size": .int(size), "offset": .int(offset),
                    "data": .string(Data(data).base64EncodedString()),
                ], timeout: 60)
            sent += data.count
            guard let received = reply["received"]?.intValue, received >= 0, received <= size else {
                throw CLIError("uploading files.\(f.name): the coordinator's reply has no 'received' count")
            }
            if reply["stored"]?.boolValue == true {
                if !quiet {
                    printErr(sent == 0 ? "files.\(f.name): \(f.path) is stored already (sha256 \(sha.prefix(12)))"
                                       : "files.\(f.name): uploaded \(f.path), \(size) bytes (sha256 \(sha.prefix(12)))")
                }
                return
            }
            guard received < size else {
                throw CLIError("uploading files.\(f.name): the coordinator has all \(size) bytes but did not store them")
            }
            if !quiet, Date().timeIntervalSince(lastReport) > 2 {
                printErr("files.\(f.name): \(received * 100 / max(size, 1))% of \(size) bytes")
                lastReport = Date()
            }
            offset = received
            data = bytes[offset..<min(offset + range, size)]
        }
    }
}
