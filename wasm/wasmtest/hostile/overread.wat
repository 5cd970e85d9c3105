;; overread: a guest that reads past its input. It declares the
;; Authorization header and answers limit with a key made of the 200 bytes
;; at its request buffer, whatever the request's length: whatever the host
;; left there from earlier requests shows in the key.
(module
  (memory (export "memory") 1)
  ;; init answer at 16: status ok, 1 header, "authorization" (22 bytes)
  (data (i32.const 16) "\00\01\00\00\00\0d\00\00\00authorization")
  (func (export "edgelimit_abi_version") (result i32) (i32.const 1))
  (func (export "edgelimit_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "edgelimit_init") (param i32 i32) (result i64) (i64.const 0x1000000016))
  (func (export "edgelimit_decide") (param $p i32) (param $n i32) (result i64)
    ;; result at 8192: limit, cost 1, then the 200 bytes at $p
    (i32.store8 (i32.const 8192) (i32.const 0))
    (i32.store (i32.const 8193) (i32.const 1))
    (memory.copy (i32.const 8197) (local.get $p) (i32.const 200))
    (i64.const 0x2000000000cd)))
