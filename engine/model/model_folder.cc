// Opens a Hugging Face model folder: config.json, then the safetensors files named by
// model.safetensors.index.json, or every *.safetensors file in the folder when there is no index.
#include "engine/model/model_folder.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/util/status_macros.h"
#include "nlohmann/json.hpp"

namespace kvr {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr char kIndexName[] = "model.safetensors.index.json";

absl::StatusOr<std::string> ReadTextFile(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) return absl::NotFoundError(absl::StrCat(path, ": no such file"));
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::PermissionDeniedError(absl::StrCat(path, ": cannot open for reading"));
  std::ostringstream s;
  s << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat(path, ": read error"));
  return s.str();
}

// The index's weight_map: tensor name -> file name (relative to the folder, no directories).
absl::StatusOr<std::map<std::string, std::string>> ReadIndex(const std::string& path) {
  KVR_ASSIGN_OR_RETURN(const std::string text, ReadTextFile(path));
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": invalid JSON: ", e.what()));
  }
  if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": missing object \"weight_map\""));
  }
  std::map<std::string, std::string> map;
  for (const auto& [name, file] : j["weight_map"].items()) {
    if (!file.is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": tensor \"", name, "\": weight_map value must be a file name, got ", file.dump()));
    }
    const std::string f = file.get<std::string>();
    if (f.empty() || f.find('/') != std::string::npos || f == "." || f == "..") {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": tensor \"", name, "\": \"", f, "\" is not a file name inside the folder"));
    }
    map.emplace(name, f);
  }
  if (map.empty()) return absl::InvalidArgumentError(absl::StrCat(path, ": \"weight_map\" is empty"));
  return map;
}

}  // namespace

absl::StatusOr<std::unique_ptr<ModelFolder>> ModelFolder::Open(const std::string& dir, const Progress& progress) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return absl::NotFoundError(absl::StrCat(dir, ": not a directory"));
  auto folder = std::unique_ptr<ModelFolder>(new ModelFolder());
  folder->dir_ = dir;
  const fs::path root(dir);

  const std::string config_path = (root / "config.json").string();
  KVR_ASSIGN_OR_RETURN(const std::string config_text, ReadTextFile(config_path));
  KVR_ASSIGN_OR_RETURN(folder->config_, ParseModelConfig(config_text, config_path));

  // Which files to open, and (with an index) which tensor each must hold.
  std::vector<std::string> files;
  std::map<std::string, std::string> weight_map;
  const std::string index_path = (root / kIndexName).string();
  const bool has_index = fs::exists(index_path, ec);
  if (has_index) {
    KVR_ASSIGN_OR_RETURN(weight_map, ReadIndex(index_path));
    std::set<std::string> names;
    for (const auto& [tensor, file] : weight_map) {
      if (names.insert(file).second && !fs::is_regular_file(root / file, ec)) {
        return absl::NotFoundError(absl::StrCat(index_path, ": tensor \"", tensor, "\" is in \"", file,
                                                "\", which does not exist in ", dir));
      }
    }
    files.assign(names.begin(), names.end());
  } else {
    for (const auto& entry : fs::directory_iterator(root, ec)) {
      if (entry.path().extension() == ".safetensors" && entry.is_regular_file(ec)) {
        files.push_back(entry.path().filename().string());
      }
    }
    if (ec) return absl::PermissionDeniedError(absl::StrCat(dir, ": cannot list: ", ec.message()));
    std::sort(files.begin(), files.end());
    if (files.empty()) {
      return absl::NotFoundError(absl::StrCat(dir, ": no *.safetensors files and no ", kIndexName));
    }
  }

  // Map every file; a tensor name may appear in one file only.
  for (size_t i = 0; i < files.size(); ++i) {
    const std::string path = (root / files[i]).string();
    KVR_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(path));
    for (const auto& [name, view] : file->tensors()) {
      auto [it, inserted] = folder->index_.emplace(name, &view);
      if (!inserted) {
        return absl::InvalidArgumentError(absl::StrCat(path, ": tensor \"", name, "\": also in ", it->second->file,
                                                       " (duplicate tensor name)"));
      }
    }
    folder->files_.push_back(std::move(file));
    if (progress) progress(static_cast<int>(i + 1), static_cast<int>(files.size()), path);
  }

  // The index and the files must agree.
  for (const auto& [tensor, file] : weight_map) {
    const std::string expected = (root / file).string();
    const auto it = folder->index_.find(tensor);
    if (it == folder->index_.end()) {
      return absl::NotFoundError(absl::StrCat(expected, ": tensor \"", tensor, "\": listed in ", kIndexName,
                                              " but not in the file"));
    }
    if (it->second->file != expected) {
      return absl::InvalidArgumentError(absl::StrCat(it->second->file, ": tensor \"", tensor, "\": ", kIndexName,
                                                     " says it is in ", file));
    }
  }
  return folder;
}

absl::StatusOr<const TensorView*> ModelFolder::Find(const std::string& name) const {
  const auto it = index_.find(name);
  if (it != index_.end()) return it->second;
  std::vector<std::string> names;
  for (const auto& f : files_) names.push_back(std::filesystem::path(f->path()).filename().string());
  return absl::NotFoundError(
      absl::StrCat(dir_, ": tensor \"", name, "\": missing (searched ", absl::StrJoin(names, ", "), ")"));
}

size_t ModelFolder::TotalBytes() const {
  size_t total = 0;
  for (const auto& [name, view] : index_) total += view->num_bytes;
  return total;
}

}  // namespace kvr
