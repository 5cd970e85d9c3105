;; host-floor: the host's share of a WASM policy call, for the wasm-host case
;; of TestBenchHTTP (tests/bench-http.sh), which assembles it with wat2wasm.
;; It declares the composite example's three headers (so the host encodes the
;; same request) and answers every request with the composite's key for the
;; benchmark's request, without reading it: what is left is the pool, the
;; request encoding, the call and the result decoding.
(module
  (memory (export "memory") 1)
  ;; init answer at 16 (ABI 2): status ok, no request fields (the composite
  ;; example reads headers only), 3 headers (45 bytes)
  (data (i32.const 16) "\00\00\03\00\00\00\08\00\00\00X-Tenant\08\00\00\00X-Region\0b\00\00\00X-Client-Id")
  ;; result at 128: limit, cost 1, key "t=acme|r=eu-west|c=42" (26 bytes)
  (data (i32.const 128) "\00\01\00\00\00t=acme|r=eu-west|c=42")
  (func (export "edgelimit_abi_version") (result i32) (i32.const 2))
  (func (export "edgelimit_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "edgelimit_init") (param i32 i32) (result i64) (i64.const 0x100000002d))
  (func (export "edgelimit_decide") (param i32 i32) (result i64) (i64.const 0x800000001a)))
