// swift-tools-version:6.1
import PackageDescription

// Targets are split by dependency weight (see docs/architecture.md): the core and the line door
// need only NIOCore, the store is the only target that builds GRDB, and the server wires them.
let strict: [SwiftSetting] = [.swiftLanguageMode(.v6)]

let package = Package(
    name: "parley",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "parley", targets: ["parley"]),
        // For the micro-benchmarks in Benchmarks/, a package of their own.
        .library(name: "ParleyCore", targets: ["ParleyCore"]),
        .library(name: "ParleyLine", targets: ["ParleyLine"]),
        .library(name: "ParleyIRC", targets: ["ParleyIRC"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird-auth", from: "2.5.0"),
        .package(url: "https://github.com/x-sheep/swift-property-based", from: "2.0.1"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
    ],
    targets: [
        .target(
            name: "ParleyCore",
            dependencies: ["CMemoryHints", .product(name: "NIOCore", package: "swift-nio")],
            swiftSettings: strict
        ),
        .target(
            name: "ParleyStore",
            dependencies: ["ParleyCore", .product(name: "GRDB", package: "GRDB.swift"),
                           .product(name: "GRDBSQLite", package: "GRDB.swift")],
            swiftSettings: strict
        ),
        .target(
            name: "ParleyLine",
            dependencies: ["ParleyCore", .product(name: "NIOCore", package: "swift-nio")],
            swiftSettings: strict
        ),
        .target(
            name: "ParleyIRC",
            dependencies: ["ParleyCore", .product(name: "NIOCore", package: "swift-nio")],
            swiftSettings: strict
        ),
        .target(
            name: "ParleyUDP",
            dependencies: [.product(name: "NIOCore", package: "swift-nio")],
            swiftSettings: strict
        ),
        .target(
            name: "ParleyServer",
            dependencies: [
                "ParleyCore", "ParleyStore", "ParleyLine", "ParleyIRC", "ParleyUDP",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "HummingbirdBcrypt", package: "hummingbird-auth"),
            ],
            swiftSettings: strict
        ),
        .target(
            name: "ParleyClient",
            dependencies: [
                "ParleyUDP",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ],
            swiftSettings: strict
        ),
        // mallopt, which Swift's Glibc module does not export.
        .target(name: "CHeapTuning"),
        // Cache prefetch hints (`__builtin_prefetch`), which Swift does not expose.
        .target(name: "CMemoryHints"),
        .executableTarget(
            name: "parley",
            dependencies: [
                "ParleyServer", "ParleyClient", "ParleyUDP", "CHeapTuning",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strict
        ),
        .testTarget(name: "ParleyUDPTests", dependencies: ["ParleyUDP"], swiftSettings: strict),
        .testTarget(name: "ParleyLineTests", dependencies: ["ParleyLine", "ParleyCore"], swiftSettings: strict),
        .testTarget(
            name: "ParleyIRCTests",
            dependencies: ["ParleyIRC", "ParleyCore", .product(name: "NIOCore", package: "swift-nio"),
                           .product(name: "PropertyBased", package: "swift-property-based")],
            swiftSettings: strict
        ),
        .testTarget(
            name: "ParleyCoreTests",
            dependencies: ["ParleyCore", "ParleyStore", .product(name: "NIOEmbedded", package: "swift-nio"),
                           .product(name: "GRDB", package: "GRDB.swift")],
            swiftSettings: strict
        ),
        .testTarget(
            name: "ParleyEndToEndTests",
            dependencies: [
                "ParleyServer", "ParleyClient", "ParleyCore", "ParleyIRC",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: strict
        ),
    ]
)
