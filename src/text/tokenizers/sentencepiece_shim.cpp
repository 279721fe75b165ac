// liblwq_sentencepiece.so: the few calls lwq makes into libsentencepiece, behind a C interface. Debian's
// libsentencepiece carries its own copy of protobuf-lite with exported symbols; in one symbol scope with the full
// libprotobuf that libtorch loads, each library's protobuf calls land in the other's copy and the process crashes
// while loading. liblwq therefore never links libsentencepiece: it dlopens this module with RTLD_LOCAL |
// RTLD_DEEPBIND (src/text/tokenizers/sentencepiece.cpp), so libsentencepiece binds to its own protobuf and stays
// out of the global scope.
#include <sentencepiece_processor.h>

#include <cstdint>
#include <string>
#include <vector>

extern "C" {

// A processor from a serialized model, or nullptr with the library's message in *error.
void* lwq_spm_load(const std::string* model, std::string* error) {
  auto* sp = new sentencepiece::SentencePieceProcessor();
  const sentencepiece::util::Status status = sp->LoadFromSerializedProto(*model);
  if (!status.ok()) {
    *error = status.ToString();
    delete sp;
    return nullptr;
  }
  return sp;
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
  auto* p = static_cast<sentencepiece::SentencePieceProcessor*>(sp);
  const int id = p->PieceToId(*piece);
  return id == p->unk_id() && p->IdToPiece(id) != *piece ? -1 : id;
}

bool lwq_spm_encode(void* sp, const std::string* text, std::vector<int>* ids, std::string* error) {
  const sentencepiece::util::Status status =
      static_cast<sentencepiece::SentencePieceProcessor*>(sp)->Encode(*text, ids);
  if (!status.ok()) *error = status.ToString();
  return status.ok();
}

// SentencePiece's text of `ids` (valid ids), except that byte pieces give their raw bytes: the library turns bytes
// that are not (yet) UTF-8 into U+FFFD, which would spoil a character split over tokens while streaming.
void lwq_spm_decode(void* sp, const std::vector<int>* ids, std::string* text) {
  auto* p = static_cast<sentencepiece::SentencePieceProcessor*>(sp);
  const sentencepiece::ImmutableSentencePieceText pieces = p->DecodeIdsAsImmutableProto(*ids);
  for (const auto& piece : pieces.pieces()) {
    const int id = static_cast<int>(piece.id());
    if (p->IsByte(id)) {
      *text += static_cast<char>(std::stoi(p->IdToPiece(id).substr(3, 2), nullptr, 16));  // "<0xNN>"
    } else {
      *text += piece.surface();
    }
  }
}

}  // extern "C"
