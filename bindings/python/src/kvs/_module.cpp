// The module kvs._kvs: its types, and what its parts share (_kvs.hpp):
// errors as exceptions by code, timeouts, keys. kvs/__init__.py is the
// API users see; this module is its native half.
#include <cmath>
#include <cstring>
#include <string>

#include "_kvs.hpp"

namespace kvs_py {

State& state() {
  static State s;
  return s;
}

PyObject* raise(int code) {
  const char* msg = kvs_last_error();
  const std::string text = msg && *msg ? msg : kvs_strerror(code);
  PyObject* cls = nullptr;
  if (state().errors != nullptr) {
    PyObject* key = PyLong_FromLong(code);
    cls = key ? PyDict_GetItem(state().errors, key) : nullptr;  // borrowed
    Py_XDECREF(key);
  }
  if (cls == nullptr) cls = state().error ? state().error : PyExc_RuntimeError;
  PyObject* exc = PyObject_CallFunction(cls, "is", code, text.c_str());
  if (exc != nullptr) {
    PyErr_SetObject(cls, exc);
    Py_DECREF(exc);
  }
  return nullptr;
}

bool check_args(const char* fn, Py_ssize_t nargs, Py_ssize_t min, Py_ssize_t max) {
  if (nargs >= min && nargs <= max) return true;
  PyErr_Format(PyExc_TypeError, "%s takes %zd to %zd arguments (%zd given)", fn, min, max, nargs);
  return false;
}

int timeout_ms(PyObject* seconds) {
  if (seconds == Py_None) return -1;
  const double s = PyFloat_AsDouble(seconds);
  if (s == -1.0 && PyErr_Occurred()) return -2;
  if (!(s >= 0) || s > 2e6) {
    PyErr_SetString(PyExc_ValueError, "timeout must be None or 0..2e6 seconds");
    return -2;
  }
  return static_cast<int>(std::ceil(s * 1000));
}

bool Key::from(PyObject* o) {
  if (PyBytes_Check(o)) {  // the common case, without a buffer
    data = PyBytes_AS_STRING(o);
    len = static_cast<size_t>(PyBytes_GET_SIZE(o));
    return true;
  }
  if (PyUnicode_Check(o)) {
    Py_ssize_t n = 0;
    data = PyUnicode_AsUTF8AndSize(o, &n);
    len = static_cast<size_t>(n);
    return data != nullptr;
  }
  if (PyObject_GetBuffer(o, &view, PyBUF_SIMPLE) != 0) return false;
  has_view = true;
  data = static_cast<const char*>(view.buf);
  len = static_cast<size_t>(view.len);
  return true;
}

namespace {

// _register_errors(base, {code: class}): the exceptions kvs/__init__.py defines.
PyObject* register_errors(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (!check_args("_register_errors", nargs, 2, 2)) return nullptr;
  Py_INCREF(args[0]);
  Py_INCREF(args[1]);
  Py_XSETREF(state().error, args[0]);
  Py_XSETREF(state().errors, args[1]);
  Py_RETURN_NONE;
}

PyMethodDef module_methods[] = {
    {"open", fastcall(open_table), METH_FASTCALL,
     "open(name, shm_prefix, shm_dir, socket, handover) -> Table"},
    {"connect", fastcall(connect_client), METH_FASTCALL, "connect(socket) -> Client"},
    {"_register_errors", fastcall(register_errors), METH_FASTCALL, nullptr},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT,
                          "kvs._kvs",
                          "libkvs for Python (native part)",
                          -1,
                          module_methods,
                          nullptr,
                          nullptr,
                          nullptr,
                          nullptr};

bool add_type(PyObject* m, PyType_Spec* spec, PyTypeObject** out) {
  PyObject* t = PyType_FromSpec(spec);
  if (t == nullptr) return false;
  *out = reinterpret_cast<PyTypeObject*>(t);
  const char* dot = std::strrchr(spec->name, '.');
  Py_INCREF(t);
  return PyModule_AddObject(m, dot + 1, t) == 0;
}

}  // namespace
}  // namespace kvs_py

PyMODINIT_FUNC PyInit__kvs() {
  using namespace kvs_py;
  PyObject* m = PyModule_Create(&module_def);
  if (m == nullptr) return nullptr;
  State& s = state();
  if (!add_type(m, &table_spec, &s.table_type) || !add_type(m, &guard_spec, &s.guard_type) ||
      !add_type(m, &value_spec, &s.value_type) || !add_type(m, &client_spec, &s.client_type) ||
      !add_type(m, &watch_spec, &s.watch_type)) {
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
