"""`tokengate::TokenSelect` outside PyTorch: a NumPy implementation and its ONNX Runtime registration.

`token_select.token_select` is the contract of DESIGN.md §3 in NumPy, bit for bit equal to
`token_ops.token_select_reference`; `ort_register.register` makes ONNX Runtime run it through onnxruntime-extensions
(`pipeline.runtime.ort_session` calls it for you); `measure` reports what the Python op costs. Importing this package
needs neither onnxruntime nor onnxruntime-extensions.
"""
