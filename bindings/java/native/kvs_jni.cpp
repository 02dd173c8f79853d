// libkvs for the JVM: io.kvs.Native's methods over kvs/kvs.h. Handles are
// the C pointers as jlong. Errors are thrown as io.kvs.KvsException with
// kvs's code and kvs_last_error(). A read guard's values are handed out as
// (address, length); ReadGuard.java wraps them in buffers of the guard's
// confined scope, so that none can be used after the guard ends.
#include <jni.h>

#include <string>
#include <vector>

#include "io_kvs_Native.h"
#include "kvs/kvs.h"

namespace {

void throw_kvs(JNIEnv* env, int code) {
  jclass cls = env->FindClass("io/kvs/KvsException");
  if (cls == nullptr) return;
  const jmethodID ctor = env->GetMethodID(cls, "<init>", "(ILjava/lang/String;)V");
  const char* msg = kvs_last_error();
  jstring text = env->NewStringUTF(msg && *msg ? msg : kvs_strerror(code));
  if (ctor == nullptr || text == nullptr) return;
  auto* e = static_cast<jthrowable>(env->NewObject(cls, ctor, static_cast<jint>(code), text));
  if (e != nullptr) env->Throw(e);
}

// A Java string as UTF-8 (empty and absent when null).
struct Utf {
  std::string s;
  bool present = false;
  Utf(JNIEnv* env, jstring j) {
    if (j == nullptr) return;
    const char* c = env->GetStringUTFChars(j, nullptr);
    if (c == nullptr) return;
    s = c;
    present = true;
    env->ReleaseStringUTFChars(j, c);
  }
  const char* get() const { return present ? s.c_str() : nullptr; }
};

// A Java byte[]'s bytes, copied (keys are short).
std::string bytes(JNIEnv* env, jbyteArray a) {
  if (a == nullptr) return {};
  std::string s(static_cast<size_t>(env->GetArrayLength(a)), '\0');
  env->GetByteArrayRegion(a, 0, static_cast<jsize>(s.size()), reinterpret_cast<jbyte*>(s.data()));
  return s;
}

jbyteArray to_java(JNIEnv* env, const void* p, size_t n) {
  jbyteArray a = env->NewByteArray(static_cast<jsize>(n));
  if (a != nullptr) {
    env->SetByteArrayRegion(a, 0, static_cast<jsize>(n), static_cast<const jbyte*>(p));
  }
  return a;
}

template <class T>
T* ptr(jlong h) {
  return reinterpret_cast<T*>(static_cast<intptr_t>(h));
}

jlong handle(const void* p) { return static_cast<jlong>(reinterpret_cast<intptr_t>(p)); }

}  // namespace

extern "C" {

JNIEXPORT jlong JNICALL Java_io_kvs_Native_open(JNIEnv* env, jclass, jstring name, jstring prefix,
                                                jstring dir, jstring socket, jint handover) {
  const Utf n(env, name), p(env, prefix), d(env, dir), s(env, socket);
  kvs_open_options o{p.get(), d.get(), s.get(), handover};
  kvs_table* t = nullptr;
  if (const int rc = kvs_open(n.s.c_str(), &o, &t); rc != KVS_OK) {
    throw_kvs(env, rc);
    return 0;
  }
  return handle(t);
}

JNIEXPORT void JNICALL Java_io_kvs_Native_close(JNIEnv*, jclass, jlong t) {
  kvs_close(ptr<kvs_table>(t));
}

JNIEXPORT jbyteArray JNICALL Java_io_kvs_Native_getCopy(JNIEnv* env, jclass, jlong t,
                                                        jbyteArray key) {
  const std::string k = bytes(env, key);
  std::vector<char> buf(256);
  for (;;) {
    size_t len = 0;
    const int rc =
        kvs_get_copy(ptr<kvs_table>(t), k.data(), k.size(), buf.data(), buf.size(), &len);
    if (rc == KVS_OK) return to_java(env, buf.data(), len);
    if (rc == KVS_ENOTFOUND) return nullptr;
    if (rc != KVS_ERANGE) {
      throw_kvs(env, rc);
      return nullptr;
    }
    buf.resize(len);  // written again meanwhile: retried with its new size
  }
}

JNIEXPORT jlong JNICALL Java_io_kvs_Native_size(JNIEnv*, jclass, jlong t) {
  return static_cast<jlong>(kvs_size(ptr<kvs_table>(t)));
}

JNIEXPORT void JNICALL Java_io_kvs_Native_waitReady(JNIEnv* env, jclass, jlong t, jint ms) {
  if (const int rc = kvs_wait_ready(ptr<kvs_table>(t), ms); rc != KVS_OK) throw_kvs(env, rc);
}

JNIEXPORT void JNICALL Java_io_kvs_Native_await(JNIEnv* env, jclass, jlong t, jint partition,
                                                jlong offset, jint ms) {
  const kvs_token tok{partition, offset};
  if (const int rc = kvs_wait(ptr<kvs_table>(t), &tok, ms); rc != KVS_OK) throw_kvs(env, rc);
}

JNIEXPORT jlong JNICALL Java_io_kvs_Native_readBegin(JNIEnv* env, jclass, jlong t) {
  kvs_txn* x = nullptr;
  if (const int rc = kvs_read_begin(ptr<kvs_table>(t), &x); rc != KVS_OK) {
    throw_kvs(env, rc);
    return 0;
  }
  return handle(x);
}

JNIEXPORT void JNICALL Java_io_kvs_Native_readEnd(JNIEnv*, jclass, jlong x) {
  kvs_read_end(ptr<kvs_txn>(x));
}

JNIEXPORT jboolean JNICALL Java_io_kvs_Native_get(JNIEnv* env, jclass, jlong x, jbyteArray key,
                                                  jlongArray out) {
  // The key is read in place: no copy on the hot path.
  const jsize n = env->GetArrayLength(key);
  jbyte* k = static_cast<jbyte*>(env->GetPrimitiveArrayCritical(key, nullptr));
  const void* v = nullptr;
  size_t len = 0;
  const int rc = kvs_get(ptr<kvs_txn>(x), k, static_cast<size_t>(n), &v, &len);
  env->ReleasePrimitiveArrayCritical(key, k, JNI_ABORT);
  if (rc == KVS_ENOTFOUND) return JNI_FALSE;
  if (rc != KVS_OK) {
    throw_kvs(env, rc);
    return JNI_FALSE;
  }
  const jlong r[2] = {handle(v), static_cast<jlong>(len)};
  env->SetLongArrayRegion(out, 0, 2, r);
  return JNI_TRUE;
}

JNIEXPORT jlong JNICALL Java_io_kvs_Native_connect(JNIEnv* env, jclass, jstring socket) {
  const Utf s(env, socket);
  kvs_client* c = nullptr;
  if (const int rc = kvs_connect(s.get(), &c); rc != KVS_OK) {
    throw_kvs(env, rc);
    return 0;
  }
  return handle(c);
}

JNIEXPORT void JNICALL Java_io_kvs_Native_disconnect(JNIEnv*, jclass, jlong c) {
  kvs_disconnect(ptr<kvs_client>(c));
}

JNIEXPORT jlongArray JNICALL Java_io_kvs_Native_write(JNIEnv* env, jclass, jlong c, jstring table,
                                                      jbyteArray key, jbyteArray value,
                                                      jboolean visible, jint ms) {
  const Utf t(env, table);
  const std::string k = bytes(env, key), v = bytes(env, value);
  kvs_write_options o{static_cast<uint32_t>(ms < 0 ? 0 : ms), visible ? 1 : 0};
  kvs_token tok{};
  const int rc = value == nullptr
                     ? kvs_erase(ptr<kvs_client>(c), t.s.c_str(), k.data(), k.size(), &o, &tok)
                     : kvs_put(ptr<kvs_client>(c), t.s.c_str(), k.data(), k.size(), v.data(),
                               v.size(), &o, &tok);
  if (rc != KVS_OK) {
    throw_kvs(env, rc);
    return nullptr;
  }
  jlongArray out = env->NewLongArray(2);
  const jlong r[2] = {tok.partition, tok.offset};
  if (out != nullptr) env->SetLongArrayRegion(out, 0, 2, r);
  return out;
}

JNIEXPORT void JNICALL Java_io_kvs_Native_forEach(JNIEnv* env, jclass, jlong x, jobject fn) {
  jclass cls = env->GetObjectClass(fn);
  const jmethodID visit = env->GetMethodID(cls, "visit", "(JJJJ)Z");
  if (visit == nullptr) return;
  struct Ctx {
    JNIEnv* env;
    jobject fn;
    jmethodID visit;
  } ctx{env, fn, visit};
  const int rc = kvs_for_each(
      ptr<kvs_txn>(x),
      [](void* c, const void* k, size_t kl, const void* v, size_t vl) -> int {
        auto* x = static_cast<Ctx*>(c);
        const jboolean go = x->env->CallBooleanMethod(
            x->fn, x->visit, handle(k), static_cast<jlong>(kl), handle(v), static_cast<jlong>(vl));
        return x->env->ExceptionCheck() || !go ? 1 : 0;  // an exception stops the walk too
      },
      &ctx);
  if (rc < 0 && !env->ExceptionCheck()) throw_kvs(env, rc);
}

JNIEXPORT jlong JNICALL Java_io_kvs_Native_watchOpen(JNIEnv* env, jclass, jlong t, jint filter,
                                                     jbyteArray key) {
  const std::string k = bytes(env, key);
  kvs_watch* w = nullptr;
  if (const int rc = kvs_watch_open(ptr<kvs_table>(t), filter, k.data(), k.size(), &w);
      rc != KVS_OK) {
    throw_kvs(env, rc);
    return 0;
  }
  return handle(w);
}

JNIEXPORT jlongArray JNICALL Java_io_kvs_Native_watchNext(JNIEnv* env, jclass, jlong w, jint ms,
                                                          jobjectArray key) {
  kvs_change c{};
  const int rc = kvs_watch_next(ptr<kvs_watch>(w), &c, ms);
  if (rc == KVS_ETIMEDOUT) return nullptr;
  if (rc != KVS_OK) {
    throw_kvs(env, rc);
    return nullptr;
  }
  env->SetObjectArrayElement(key, 0, to_java(env, c.key, c.key_len));
  jlongArray out = env->NewLongArray(5);
  const jlong r[5] = {c.kind, static_cast<jlong>(c.partition), c.offset, c.timestamp_ms,
                      static_cast<jlong>(c.position)};
  if (out != nullptr) env->SetLongArrayRegion(out, 0, 5, r);
  return out;
}

JNIEXPORT void JNICALL Java_io_kvs_Native_watchClose(JNIEnv*, jclass, jlong w) {
  kvs_watch_close(ptr<kvs_watch>(w));
}

JNIEXPORT jlongArray JNICALL Java_io_kvs_Native_batch(JNIEnv* env, jclass, jlong c, jstring table,
                                                      jobjectArray keys, jobjectArray values,
                                                      jboolean visible, jint ms) {
  const Utf t(env, table);
  const jsize n = env->GetArrayLength(keys);
  std::vector<std::string> k(static_cast<size_t>(n)), v(static_cast<size_t>(n));
  std::vector<kvs_write_op> ops(static_cast<size_t>(n));
  for (jsize i = 0; i < n; ++i) {
    const auto u = static_cast<size_t>(i);
    auto* kj = static_cast<jbyteArray>(env->GetObjectArrayElement(keys, i));
    auto* vj = static_cast<jbyteArray>(env->GetObjectArrayElement(values, i));
    k[u] = bytes(env, kj);
    v[u] = bytes(env, vj);
    ops[u] = kvs_write_op{k[u].data(), k[u].size(), vj ? v[u].data() : nullptr, v[u].size()};
    env->DeleteLocalRef(kj);
    if (vj) env->DeleteLocalRef(vj);
  }
  kvs_write_options o{static_cast<uint32_t>(ms < 0 ? 0 : ms), visible ? 1 : 0};
  std::vector<int> codes(static_cast<size_t>(n));
  std::vector<kvs_token> toks(static_cast<size_t>(n));
  if (const int rc = kvs_write_batch(ptr<kvs_client>(c), t.s.c_str(), ops.data(), ops.size(), &o,
                                     codes.data(), toks.data());
      rc != KVS_OK) {
    throw_kvs(env, rc);
    return nullptr;
  }
  std::vector<jlong> r;
  for (size_t i = 0; i < ops.size(); ++i) {
    r.insert(r.end(), {codes[i], toks[i].partition, toks[i].offset});
  }
  jlongArray out = env->NewLongArray(static_cast<jsize>(r.size()));
  if (out != nullptr) env->SetLongArrayRegion(out, 0, static_cast<jsize>(r.size()), r.data());
  return out;
}

}  // extern "C"
