// swift-tools-version:6.1
import PackageDescription

// Micro-benchmarks (ordo-one/benchmark), a package of their own so that `swift test` at the root
// neither resolves nor builds the benchmark tooling. Run: `cd Benchmarks && swift package benchmark`.
let package = Package(
    name: "parley-benchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "parley", path: ".."),
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
    ],
    targets: [
        .executableTarget(
            name: "ParleyBenchmarks",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "ParleyCore", package: "parley"),
                .product(name: "ParleyLine", package: "parley"),
                .product(name: "ParleyIRC", package: "parley"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
            ],
            path: "Benchmarks/ParleyBenchmarks",
            swiftSettings: [.swiftLanguageMode(.v6)],
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
    ]
)
