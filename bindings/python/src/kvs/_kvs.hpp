// What the parts of kvs._kvs share: the module's state (its types and the
// error classes kvs/__init__.py registers), argument helpers, and raising
// a kvs error as the exception of its code.
#pragma once

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>

#include "kvs/kvs.h"

namespace kvs_py {

struct TableObject {
  PyObject_HEAD kvs_table* table;
};

struct GuardObject {
  PyObject_HEAD PyObject* owner;  // the Table: kept alive while the guard is
  kvs_txn* txn;                   // null once ended
  pthread_t thread;               // a guard belongs to its thread (kvs_read_begin)
  PyObject* views;                // weak references to the memoryviews handed out
  Py_ssize_t exports;             // buffers of its values still exported (by any view)
};

struct State {
  PyTypeObject* table_type = nullptr;
  PyTypeObject* guard_type = nullptr;
  PyTypeObject* client_type = nullptr;
  PyTypeObject* value_type = nullptr;
  PyTypeObject* watch_type = nullptr;
  PyObject* errors = nullptr;  // {code: exception class}, from kvs/__init__.py
  PyObject* error = nullptr;   // kvs.Error, for codes without a class
};
State& state();

// Raises the exception of `code` with kvs_last_error(); returns nullptr.
PyObject* raise(int code);
// False (TypeError set) unless min <= nargs <= max.
bool check_args(const char* fn, Py_ssize_t nargs, Py_ssize_t min, Py_ssize_t max);
// A timeout in seconds (None: for ever) as kvs's milliseconds (-1: for
// ever); -2 with an exception set.
int timeout_ms(PyObject* seconds);

// A key: any object with the buffer protocol (bytes, bytearray,
// memoryview) or a str (its UTF-8). Borrowed for the call.
struct Key {
  const char* data = nullptr;
  size_t len = 0;
  Py_buffer view{};
  bool has_view = false;
  bool from(PyObject* o);
  Key() = default;
  Key(const Key&) = delete;
  Key& operator=(const Key&) = delete;
  ~Key() {
    if (has_view) PyBuffer_Release(&view);
  }
};

template <class F>
auto without_gil(F f) {
  PyThreadState* s = PyEval_SaveThread();
  auto r = f();
  PyEval_RestoreThread(s);
  return r;
}

template <class F>
PyCFunction fastcall(F f) {
  return reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(f));
}

extern PyType_Spec table_spec;
extern PyType_Spec guard_spec;
extern PyType_Spec value_spec;
extern PyType_Spec watch_spec;
PyObject* open_watch(PyObject* table, PyObject* const* args, Py_ssize_t nargs);
extern PyType_Spec client_spec;
PyObject* open_table(PyObject* module, PyObject* const* args, Py_ssize_t nargs);
PyObject* connect_client(PyObject* module, PyObject* const* args, Py_ssize_t nargs);

}  // namespace kvs_py
