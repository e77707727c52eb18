//! WeChat's message encryption ("WXBizMsgCrypt"), shared by Official
//! Accounts, Mini Programs, the Open Platform and WeCom.
//!
//! `AESKey = base64(EncodingAESKey + "=")` (32 bytes), AES-256-CBC with the
//! key's first 16 bytes as IV, PKCS#7 padding to a multiple of **32** bytes.
//! Plaintext: 16 random bytes, the message length (4 bytes, big-endian), the
//! message, the appid (or corpid) it is meant for. `msg_signature` is the hex
//! SHA-1 of the sorted, concatenated token, timestamp, nonce and `Encrypt`.
//!
//! The cipher, the hash and Base64 come from RustCrypto and `base64`; only
//! the layout above is written here. Invariant: an error never quotes the
//! ciphertext, the plaintext, the key or the token.

use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit, block_padding::NoPadding};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use secrecy::{ExposeSecret, SecretSlice, SecretString};
use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;

type Encryptor = cbc::Encryptor<aes::Aes256>;
type Decryptor = cbc::Decryptor<aes::Aes256>;

/// WeChat pads to a multiple of this many bytes (not AES's 16).
const PAD_BLOCK: usize = 32;
/// The length of an `EncodingAESKey`.
pub const ENCODING_AES_KEY_LEN: usize = 43;

/// Why a message could not be checked, opened or sealed. The variants carry
/// no part of the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CryptError {
    #[error("the EncodingAESKey is not 43 characters of Base64 that decode to 32 bytes")]
    Key,
    #[error("the message signature does not match")]
    Signature,
    #[error("the encrypted message is not Base64")]
    Base64,
    #[error("the encrypted message is not a whole number of AES blocks")]
    Length,
    #[error("the decrypted message has invalid padding")]
    Padding,
    #[error("the decrypted message's length field does not fit the message")]
    Layout,
    #[error("the decrypted message is meant for another appid")]
    AppId,
    #[error("the decrypted message is not UTF-8")]
    Utf8,
}

/// Checks an `EncodingAESKey` as the configuration does.
pub fn check_encoding_aes_key(encoding_aes_key: &str) -> Result<(), CryptError> {
    aes_key(encoding_aes_key).map(|_| ())
}

fn aes_key(encoding_aes_key: &str) -> Result<[u8; 32], CryptError> {
    if encoding_aes_key.len() != ENCODING_AES_KEY_LEN {
        return Err(CryptError::Key);
    }
    let mut padded = String::with_capacity(44);
    padded.push_str(encoding_aes_key);
    padded.push('=');
    // WeChat's keys are not always canonical Base64 in their last character,
    // so the trailing bits are not checked (as every SDK decodes them).
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
    );
    let bytes = engine.decode(padded).map_err(|_| CryptError::Key)?;
    bytes.try_into().map_err(|_| CryptError::Key)
}

/// The keys of one platform (or app): checks, opens and seals its messages.
pub struct MsgCrypt {
    token: SecretString,
    key: SecretSlice<u8>,
    appid: String,
}

impl std::fmt::Debug for MsgCrypt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MsgCrypt")
            .field("appid", &self.appid)
            .finish_non_exhaustive()
    }
}

impl MsgCrypt {
    /// The crypt of `appid` (the platform's, or WeCom's corpid) with its
    /// message-check `token` and `encoding_aes_key`.
    pub fn new(token: &str, encoding_aes_key: &str, appid: &str) -> Result<MsgCrypt, CryptError> {
        let key = aes_key(encoding_aes_key)?;
        Ok(MsgCrypt {
            token: SecretString::from(token.to_string()),
            key: SecretSlice::from(key.to_vec()),
            appid: appid.to_string(),
        })
    }

    /// The appid this crypt opens messages for.
    pub fn appid(&self) -> &str {
        &self.appid
    }

    /// `msg_signature` of `encrypt` sent at `timestamp` with `nonce`.
    pub fn signature(&self, timestamp: &str, nonce: &str, encrypt: &str) -> String {
        let mut parts = [self.token.expose_secret(), timestamp, nonce, encrypt];
        parts.sort_unstable();
        let mut hash = Sha1::new();
        for part in parts {
            hash.update(part.as_bytes());
        }
        hex::encode(hash.finalize())
    }

    /// Ok when `signature` (hex, either case) signs `encrypt`; compared in
    /// constant time.
    pub fn verify(
        &self,
        signature: &str,
        timestamp: &str,
        nonce: &str,
        encrypt: &str,
    ) -> Result<(), CryptError> {
        let expected = self.signature(timestamp, nonce, encrypt);
        let given = signature.to_ascii_lowercase();
        if given.len() == expected.len() && bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
            Ok(())
        } else {
            Err(CryptError::Signature)
        }
    }

    /// Decrypts `encrypt` (Base64) and checks that it is meant for this appid.
    pub fn decrypt(&self, encrypt: &str) -> Result<String, CryptError> {
        let mut buf = STANDARD.decode(encrypt.trim()).map_err(|_| CryptError::Base64)?;
        if buf.is_empty() || buf.len() % PAD_BLOCK != 0 {
            return Err(CryptError::Length);
        }
        let key = self.key.expose_secret();
        let plain = Decryptor::new(key.into(), key[..16].into())
            .decrypt_padded_mut::<NoPadding>(&mut buf)
            .map_err(|_| CryptError::Length)?;
        let pad = usize::from(*plain.last().ok_or(CryptError::Padding)?);
        if pad == 0 || pad > PAD_BLOCK || pad > plain.len() {
            return Err(CryptError::Padding);
        }
        let plain = &plain[..plain.len() - pad];
        if plain.len() < 20 {
            return Err(CryptError::Layout);
        }
        let len = u32::from_be_bytes([plain[16], plain[17], plain[18], plain[19]]) as usize;
        let rest = &plain[20..];
        if len > rest.len() {
            return Err(CryptError::Layout);
        }
        let (msg, appid) = rest.split_at(len);
        if !bool::from(appid.ct_eq(self.appid.as_bytes())) {
            return Err(CryptError::AppId);
        }
        String::from_utf8(msg.to_vec()).map_err(|_| CryptError::Utf8)
    }

    /// Encrypts `msg` for this appid with fresh random bytes (Base64).
    pub fn encrypt(&self, msg: &str) -> String {
        self.encrypt_with(msg, &rand::random::<[u8; 16]>())
    }

    /// Encrypts `msg` with the given 16 random bytes (for test vectors).
    pub fn encrypt_with(&self, msg: &str, random: &[u8; 16]) -> String {
        let mut buf = Vec::with_capacity(20 + msg.len() + self.appid.len() + PAD_BLOCK);
        buf.extend_from_slice(random);
        buf.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        buf.extend_from_slice(msg.as_bytes());
        buf.extend_from_slice(self.appid.as_bytes());
        let pad = PAD_BLOCK - buf.len() % PAD_BLOCK;
        buf.resize(buf.len() + pad, pad as u8);
        let len = buf.len();
        let key = self.key.expose_secret();
        // The buffer is already a whole number of blocks: encryption cannot fail.
        let sealed = Encryptor::new(key.into(), key[..16].into())
            .encrypt_padded_mut::<NoPadding>(&mut buf, len)
            .map(<[u8]>::to_vec)
            .unwrap_or_default();
        STANDARD.encode(sealed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Vector A (Tencent's sample constants; WxJava's WxCryptUtilTest).
    const KEY_A: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
    const TOKEN_A: &str = "pamtest";
    const APPID_A: &str = "wxb11529c136998cb6";

    #[test]
    fn vector_a_encrypts_as_tencents_sample() {
        let crypt = MsgCrypt::new(TOKEN_A, KEY_A, APPID_A).unwrap();
        let sealed = crypt.encrypt_with("我是中文abcd123", b"aaaabbbbccccdddd");
        assert_eq!(
            sealed,
            "jn1L23DB+6ELqJ+6bruv21Y6MD7KeIfP82D6gU39rmkgczbWwt5+3bnyg5K55bgVtVzd832WzZGMhkP72vVOfg=="
        );
        assert_eq!(crypt.decrypt(&sealed).unwrap(), "我是中文abcd123");
    }

    // Vector B: EasyWeChat's tests/Kernel/EncryptorTest.php (same key, token, appid).
    const ENCRYPT_B: &str = "rTNFcsut4LfGuAFKEUVVpwcaCOTJzOd9twZdIW910jb3k+iicx2uvhttIZ3Qg9Qgty3BEF2xbOrz6boTfb30dMomcgrkTqdFPwnhqbk+kIQ7rZiwny9D7NUrTgA5kpX3KsZvrXzUZyP2x9YOlxbgm572lmxKvM7HAQQhIQ/p6HBmoY30bGXFK0BtIu1pW9TjhOYrLQoU18nWYjWqDA1ynkmOytpv7QRI1P1+0NoxL0q2zO1DgeSvnE8CZGo/o5Ap/WHK5W2RAsinpzN4/LjPnmB6U01I5XCoJoC0GK/yMZycd2Oh8Nq6+wBkC1U85oy0ktOY4nLvsQMLrourmMGdZHuTbqpeJ8Ao/5PRYJ+WBvRUwPfGKBL2+2IKZF49vAJqkcGWSHGE76ZN2erXeuNazf/o9o3lIE3q739o4c8t9QGPe31GT2Go/rOz1BsrASwvauNulCh+++yz+CQzBIuikA==";

    #[test]
    fn vector_b_verifies_and_decrypts_easywechats_message() {
        let crypt = MsgCrypt::new(TOKEN_A, KEY_A, APPID_A).unwrap();
        crypt
            .verify("4f3ad57b6989f09f4eb392acce4f9e93942ed890", "1458300676", "260774613", ENCRYPT_B)
            .unwrap();
        let xml = crypt.decrypt(ENCRYPT_B).unwrap();
        assert!(xml.contains("asdasdasdsadasd"), "FromUserName");
        assert!(xml.contains("1234567898"), "CreateTime");
        assert!(xml.contains("hello"), "Content");
        assert_eq!(
            crypt.verify("4f3ad57b6989f09f4eb392acce4f9e93942ed890", "1458300676", "260774614", ENCRYPT_B),
            Err(CryptError::Signature)
        );
    }

    // Vector C: wechatpy's tests/test_crypto.py (WeCom).
    const KEY_C: &str = "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR";
    const TOKEN_C: &str = "123456";
    const CORP_C: &str = "wx49f0ab532d5d035a";
    const ENCRYPT_C: &str = "RgqEoJj5A4EMYlLvWO1F86ioRjZfaex/gePD0gOXTxpsq5Yj4GNglrBb8I2BAJVODGajiFnXBu7mCPatfjsu6IHCrsTyeDXzF6Bv283dGymzxh6ydJRvZsryDyZbLTE7rhnus50qGPMfp2wASFlzEgMW9z1ef/RD8XzaFYgm7iTdaXpXaG4+BiYyolBug/gYNx410cvkKR2/nPwBiT+P4hIiOAQqGp/TywZBtDh1yCF2KOd0gpiMZ5jSw3e29mTvmUHzkVQiMS6td7vXUaWOMZnYZlF3So2SjHnwh4jYFxdgpkHHqIrH/54SNdshoQgWYEvccTKe7FS709/5t6NMxuGhcUGAPOQipvWTT4dShyqio7mlsl5noTrb++x6En749zCpQVhDpbV6GDnTbcX2e8K9QaNWHp91eBdCRxthuL0=";

    #[test]
    fn vector_c_wecom_message_echo_and_reply() {
        let crypt = MsgCrypt::new(TOKEN_C, KEY_C, CORP_C).unwrap();
        crypt
            .verify("74d92dfeb87ba7c714f89d98870ae5eb62dff26d", "1411525903", "461056294", ENCRYPT_C)
            .unwrap();
        let xml = crypt.decrypt(ENCRYPT_C).unwrap();
        assert!(xml.contains("<Content><![CDATA[test]]></Content>"), "{}", xml.len());
        assert!(xml.contains("messense"));

        // The URL check's echostr.
        let echo = "4ByGGj+sVCYcvGeQYhaKIk1o0pQRNbRjxybjTGblXrBaXlTXeOo1+bXFXDQQb1o6co6Yh9Bv41n7hOchLF6p+Q==";
        crypt
            .verify("dd6b9c95b495b3f7e2901bfbc76c664930ffdb96", "1411443780", "437374425", echo)
            .unwrap();
        crypt.decrypt(echo).unwrap();
        assert_eq!(
            crypt.verify("dd6b9c95b495b3f7e2901bfbc76c664930ffdb96", "1411443780", "437374424", echo),
            Err(CryptError::Signature)
        );

        // The reply, sealed with wechatpy's fixed random bytes.
        let reply = "<xml>\n<MsgType><![CDATA[text]]></MsgType>\n<Content><![CDATA[test]]></Content>\n<FromUserName><![CDATA[wx49f0ab532d5d035a]]></FromUserName>\n<ToUserName><![CDATA[messense]]></ToUserName>\n<AgentID>1</AgentID>\n<CreateTime>1411525903</CreateTime>\n</xml>";
        let sealed = crypt.encrypt_with(reply, b"1234567890123456");
        assert_eq!(
            sealed,
            "9s4gMv99m88kKTh/H8IdkOiMg6bisoy3ypwy9H4hvSPe9nsGaqyw5hhSjdYbcrKk+j3nba4HMOTzHrluLBYqxgNcBqGsL8GqxlhZgURnAtObvesEl5nZ+uBE8bviY0LWke8Zy9V/QYKxNV2FqllNXcfmstttyIkMKCCmVbCFM2JTF5wY0nFhHZSjPUL2Q1qvSUCUld+/WIXrx0oyKQmpB6o8NRrrNrsDf03oxI1p9FxUgMnwKKZeOA/uu+2IEvEBtb7muXsVbwbgX05UPPJvFurDXafG0RQyPR+mf1nDnAtQmmNOuiR5MIkdQ39xn1vWwi1O5oazPoQJz0nTYjxxEE8kv3kFxtAGVRe3ypD3WeK2XeFYFMNMpatF9XiKzHo3"
        );
        assert_eq!(
            crypt.signature("1411525903", "461056294", &sealed),
            "407518b7649e86ef23978113f92d27afa9296533"
        );
    }

    #[test]
    fn a_message_for_another_appid_is_refused() {
        let ours = MsgCrypt::new(TOKEN_A, KEY_A, APPID_A).unwrap();
        let other = MsgCrypt::new(TOKEN_A, KEY_A, "wx0000000000000000").unwrap();
        assert_eq!(other.decrypt(&ours.encrypt("hi")), Err(CryptError::AppId));
    }

    #[test]
    fn garbage_is_an_error_never_a_panic() {
        let crypt = MsgCrypt::new(TOKEN_A, KEY_A, APPID_A).unwrap();
        for bad in ["", "!!!", "AAAA", &STANDARD.encode([0u8; 16]), &STANDARD.encode([7u8; 64])] {
            assert!(crypt.decrypt(bad).is_err(), "{bad:?}");
        }
        // Valid padding, absurd length field.
        let mut plain = vec![0u8; 16];
        plain.extend_from_slice(&u32::MAX.to_be_bytes());
        plain.resize(64, 12);
        let key = aes_key(KEY_A).unwrap();
        let len = plain.len();
        let sealed = Encryptor::new((&key).into(), key[..16].into())
            .encrypt_padded_mut::<NoPadding>(&mut plain, len)
            .unwrap()
            .to_vec();
        assert_eq!(crypt.decrypt(&STANDARD.encode(sealed)), Err(CryptError::Layout));
    }

    #[test]
    fn keys_must_be_43_characters_of_base64() {
        assert!(check_encoding_aes_key(KEY_A).is_ok());
        assert!(check_encoding_aes_key(KEY_C).is_ok());
        assert_eq!(check_encoding_aes_key("short"), Err(CryptError::Key));
        assert_eq!(check_encoding_aes_key(&"*".repeat(43)), Err(CryptError::Key));
    }
}
