// liblwq_sentencepiece.so: the few calls lwq makes into libsentencepiece, behind a C interface. Debian's
// libsentencepiece carries its own copy of protobuf-lite with exported symbols; in one symbol scope with the full
// libprotobuf that libtorch loads, each library's protobuf calls land in the other's copy and the process crashes
// while loading. liblwq therefore never links libsentencepiece: it dlopens this module with RTLD_LOCAL |
// RTLD_DEEPBIND (src/text/tokenizers/sentencepiece.cpp), so libsentencepiece binds to its own protobuf and stays
// out of the global scope.
#include <sentencepiece_processor.h>

#include <cctype>
#include <cstdint>
#include <exception>
#include <memory>
#include <string>
#include <vector>

extern "C" {

// No C++ exception may leave these functions (they are reached through dlsym, as C): libsentencepiece throws from
// inside LoadFromSerializedProto on some malformed models (darts_clone: "zero-length key"), which also leaked the
// processor (found by fuzz/sentencepiece_model under LeakSanitizer).

// A processor from a serialized model, or nullptr with the library's message in *error.
void* lwq_spm_load(const std::string* model, std::string* error) {
  try {
    auto sp = std::make_unique<sentencepiece::SentencePieceProcessor>();
    const sentencepiece::util::Status status = sp->LoadFromSerializedProto(*model);
    if (!status.ok()) {
      *error = status.ToString();
      return nullptr;
    }
    return sp.release();
  } catch (const std::exception& e) {
    *error = e.what();
  } catch (...) {
    *error = "an unknown error inside libsentencepiece";
  }
  return nullptr;
}

void lwq_spm_free(void* sp) { delete static_cast<sentencepiece::SentencePieceProcessor*>(sp); }

// Pieces, BOS, EOS, unk ids (-1 when the model has none).
void lwq_spm_info(void* sp, int64_t* pieces, int64_t* bos, int64_t* eos, int64_t* unk) {
  auto* p = static_cast<sentencepiece::SentencePieceProcessor*>(sp);
  *pieces = p->GetPieceSize();
  *bos = p->bos_id();
  *eos = p->eos_id();
  *unk = p->unk_id();
}

// The id of a piece, or -1 when it is not one (PieceToId itself gives the unk id).
int64_t lwq_spm_piece_id(void* sp, const std::string* piece) {
  try {
    auto* p = static_cast<sentencepiece::SentencePieceProcessor*>(sp);
    const int id = p->PieceToId(*piece);
    return id == p->unk_id() && p->IdToPiece(id) != *piece ? -1 : id;
  } catch (...) {
    return -1;
  }
}

bool lwq_spm_encode(void* sp, const std::string* text, std::vector<int>* ids, std::string* error) {
  try {
    const sentencepiece::util::Status status =
        static_cast<sentencepiece::SentencePieceProcessor*>(sp)->Encode(*text, ids);
    if (!status.ok()) *error = status.ToString();
    return status.ok();
  } catch (const std::exception& e) {
    *error = e.what();
  } catch (...) {
    *error = "an unknown error inside libsentencepiece";
  }
  return false;
}

// SentencePiece's text of `ids` (valid ids), except that byte pieces give their raw bytes: the library turns bytes
// that are not (yet) UTF-8 into U+FFFD, which would spoil a character split over tokens while streaming.
bool lwq_spm_decode(void* sp, const std::vector<int>* ids, std::string* text, std::string* error) {
  try {
    auto* p = static_cast<sentencepiece::SentencePieceProcessor*>(sp);
    const sentencepiece::ImmutableSentencePieceText pieces = p->DecodeIdsAsImmutableProto(*ids);
    for (const auto& piece : pieces.pieces()) {
      const int id = static_cast<int>(piece.id());
      const std::string name = p->IsByte(id) ? p->IdToPiece(id) : std::string();
      const bool hex = name.size() == 6 && name.compare(0, 3, "<0x") == 0 && name[5] == '>' &&
                       std::isxdigit(static_cast<unsigned char>(name[3])) &&
                       std::isxdigit(static_cast<unsigned char>(name[4]));
      if (hex) {
        *text += static_cast<char>(std::stoi(name.substr(3, 2), nullptr, 16));  // "<0xNN>"
      } else {
        *text += piece.surface();  // a byte piece of an edited model without the <0xNN> name: its surface
      }
    }
    return true;
  } catch (const std::exception& e) {
    *error = e.what();
  } catch (...) {
    *error = "an unknown error inside libsentencepiece";
  }
  return false;
}

}  // extern "C"
