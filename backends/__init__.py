"""Generated backends (installed as ``gaugemath.backends``).

The PyTorch and JAX implementations of DDCAdam/DDCMuon are emitted here by the code
generator from the formulas the symbolic core derives (issues 4-7); nothing in this
package is written by hand. It is empty until the code generator lands.
"""
