;; recurse: edgelimit_decide recurses twice per level without any loop:
;; 2^40 calls never overflow the stack but never finish either. Interrupt
;; checks at function entries stop it.
(module
  (memory (export "memory") 1)
  (data (i32.const 16) "\00\00\00\00\00")
  (func (export "edgelimit_abi_version") (result i32) (i32.const 1))
  (func (export "edgelimit_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "edgelimit_init") (param i32 i32) (result i64) (i64.const 0x1000000005))
  (func $fan (param $n i32)
    (if (local.get $n)
      (then
        (call $fan (i32.sub (local.get $n) (i32.const 1)))
        (call $fan (i32.sub (local.get $n) (i32.const 1))))))
  (func (export "edgelimit_decide") (param i32 i32) (result i64)
    (call $fan (i32.const 40))
    (i64.const 0)))
