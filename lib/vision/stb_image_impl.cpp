// The one translation unit that compiles stb_image (Debian libstb-dev),
// restricted to the formats the API documents. Warnings are disabled for this
// file only (third-party code).
#define STB_IMAGE_IMPLEMENTATION
#define STBI_ONLY_PNG
#define STBI_ONLY_JPEG
#define STBI_ONLY_BMP
#define STBI_ONLY_PNM
#define STBI_NO_STDIO          // we read files ourselves (clear I/O errors)
#define STBI_NO_LINEAR         // no float (HDR) paths
#define STBI_NO_HDR
#define STBI_MAX_DIMENSIONS 32768  // = kMaxImageSide; a second line of defence
#include <stb/stb_image.h>
