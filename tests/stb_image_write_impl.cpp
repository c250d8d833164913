// stb_image_write (Debian libstb-dev) for the tests that need encoded PNG,
// BMP and JPEG bytes. Third-party code: built without warnings and without
// UBSan (its JPEG writer shifts negative values).
#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STBI_WRITE_NO_STDIO
#include <stb/stb_image_write.h>
